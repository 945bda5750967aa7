"""MNIST as uint8 tensors, parsed once from the verified IDX files (``mnist_files``) and cached
beside them (``<data_dir>/MNIST/processed/mnist_lab_uint8.pt``) with their shapes and sha256; every
read checks the cache against those, so a cache cut short or changed is never trained on. Also
the pixels' mean and standard deviation (``MEAN``, ``STD``), which need no torch or Lightning.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_lab.data.mnist_files import FILES, DataError, acquire, checksum_problem, raw_dir, read_idx
from mnist_lab.records.atomic_files import write_atomic

if TYPE_CHECKING:
    import torch

# The mean and standard deviation of MNIST's training pixels (scaled to 0-1): what normalization
# subtracts and divides by, and what a drawn image or a predicted file is scaled with.
MEAN, STD = 0.1307, 0.3081


def cache_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "MNIST" / "processed" / "mnist_lab_uint8.pt"


def load_arrays(data_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The verified data as uint8 tensors: images (N, 28, 28) and labels (N,), train and test.

    The first call acquires and verifies the IDX files, then caches the parsed tensors beside
    them with their shapes and sha256; later calls read only the cache (loaded weights-only)
    and check it against those (a sha256 of 55 MB), so a cache cut short or changed since is
    never trained on: it is rebuilt from the IDX files if they pass the canonical checksums, and
    refused with a sentence if not.
    """
    import torch

    cache = cache_path(data_dir)
    if not cache.exists():
        acquire(data_dir)
        raw = raw_dir(data_dir)
        save_cache(data_dir, {key: read_idx(raw / name) for name, key in zip(FILES, ARRAYS, strict=True)})
    try:
        cached = torch.load(cache, weights_only=True)
    except Exception as e:
        problem = f"cannot be read ({type(e).__name__})"
    else:
        problem = cache_problem(cached)
    if problem:
        raw = raw_dir(data_dir)
        if not all((raw / name).is_file() and checksum_problem(raw / name) is None for name in FILES):
            raise DataError(
                f"the cached tensors {cache} {problem}; delete the file and run again to rebuild it from the IDX files."
            )
        cached = {key: read_idx(raw / name) for name, key in zip(FILES, ARRAYS, strict=True)}
        save_cache(data_dir, cached)  # rebuilt from the canonical files: nothing to ask
        cached = {key: torch.from_numpy(np.array(v, dtype=np.uint8)) for key, v in cached.items()}
    return {key: cached[key] for key in ARRAYS}


ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")  # in the order of FILES


def _sha256(tensors: dict) -> str:
    digest = hashlib.sha256()
    for key in ARRAYS:
        digest.update(tensors[key].contiguous().numpy().data)
    return digest.hexdigest()


def cache_problem(cached) -> str | None:
    """What is wrong with the cache's content (as ``load_arrays`` says it), or None."""
    import torch

    if not isinstance(cached, dict) or not all(isinstance(cached.get(k), torch.Tensor) for k in ARRAYS):
        return f"do not hold the four arrays {', '.join(ARRAYS)}"
    meta = cached.get("meta")
    if not isinstance(meta, dict) or "sha256" not in meta:
        return "carry no digest to check them against (another program, or an older mnist_lab, wrote them)"
    shapes = {key: list(cached[key].shape) for key in ARRAYS}
    if meta.get("shapes") != shapes or any(cached[k].dtype != torch.uint8 for k in ARRAYS):
        return f"have shapes {shapes} instead of the ones stored with them, {meta.get('shapes')}"
    for split in ("train", "test"):
        images, labels = cached[f"{split}_images"], cached[f"{split}_labels"]
        if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28) or labels.shape != images.shape[:1]:
            return f"hold {split} images of shape {list(images.shape)} with {len(labels)} labels"
        if len(labels) and int(labels.max()) > 9:
            return f"hold {split} labels outside 0-9 (up to {int(labels.max())})"
    if _sha256(cached) != meta["sha256"]:
        return "do not match the sha256 stored with them (the file was changed or damaged)"
    return None


def save_cache(data_dir: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write parsed uint8 arrays, with their shapes and sha256, to the cache ``load_arrays`` reads."""
    import torch

    tensors = {k: torch.from_numpy(np.array(arrays[k], dtype=np.uint8)) for k in ARRAYS}
    meta = {"shapes": {k: list(t.shape) for k, t in tensors.items()}, "sha256": _sha256(tensors)}
    buffer = io.BytesIO()
    torch.save({**tensors, "meta": meta}, buffer)
    write_atomic(cache_path(data_dir), buffer.getvalue())
