"""Files changed outside mnist_lab get one sentence: a forged checkpoint in ``evaluate``, an
image too large to open in ``predict``, a metrics.json that is not a record in the report, a
parsed cache that no longer matches its digest. And a key removed with ``~`` that Lightning has
a default for is no error."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch

from mnist_lab.data import mnist_arrays, mnist_files
from tests.conftest import checksums_of, compose_train, run_cli, synthetic_arrays, write_idx_files

MLP = {"_target_": "mnist_lab.models.MLP", "hidden": [8]}
LOSS = {"_target_": "torch.nn.CrossEntropyLoss"}


@pytest.mark.parametrize(
    "forged, why",
    [
        ({"model": MLP, "loss": LOSS}, "Error(s) in loading state_dict for MLP"),  # weights of another shape
        ({"model": {**MLP, "hidden": "wide"}, "loss": LOSS}, "TypeError: "),  # arguments the class refuses
        ({"model": {"_target_": "torch.nn.Linear", "in_features": 1}, "loss": LOSS}, "TypeError: "),
    ],
)
def test_evaluate_on_a_forged_checkpoint_is_one_sentence(tmp_path, forged, why):
    torch.save(
        {"hyper_parameters": {"config": forged}, "state_dict": {"net.layers.0.weight": torch.zeros(3)}},
        tmp_path / "forged.ckpt",
    )
    result = run_cli("mnist_lab.evaluate", "ckpt_path=forged.ckpt", "device=cpu", cwd=tmp_path, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: forged.ckpt does not rebuild into a net (")
    assert why in lines[0] and lines[0].endswith("written by mnist_lab.train.")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that says it is width x height (Pillow reads the size before any pixel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20_000, 12_000])  # Pillow's error, and its warning, thresholds
def test_predict_on_a_huge_image_is_one_sentence(tmp_path, side):
    from mnist_lab.predict import ImageError, load_images

    (tmp_path / "huge.png").write_bytes(png_header_only(side, side))
    with pytest.raises(ImageError, match=r"huge.png is too large to open safely \(more than [\d,]+ pixels\); scale"):
        load_images([tmp_path / "huge.png"])


@pytest.mark.parametrize(
    "content",
    [
        "null",
        "[]",
        '"ok"',
        '{"status": "ok", "best_val_acc": "high"}',
        '{"status": "ok", "val_acc": [0.5, {"x": 1}]}',
        '{"status": 3}',
    ],
)
def test_the_report_makes_a_metrics_json_that_is_not_a_record_a_failed_row(tmp_path, content):
    from mnist_lab.analysis.summary import write_report

    good = {
        "status": "ok",
        "best_val_acc": 0.9,
        "test_acc": 0.9,
        "epochs": 1,
        "val_acc": [0.9],
        "overrides": ["optimizer.lr=0.1"],
        "train_time_s": 1.0,
    }
    for job, text in (("0_optimizer.lr=0.1", json.dumps(good)), ("1_optimizer.lr=0.2", content)):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text(text)
    rows = {row["job"]: row for row in write_report(tmp_path, show=False)}
    assert rows["0_optimizer.lr=0.1"]["status"] == "ok"
    bad = rows["1_optimizer.lr=0.2"]
    assert bad["status"] == "failed" and bad["error"].startswith(f"{tmp_path / '1_optimizer.lr=0.2'}/metrics.json")
    assert bad["error"].endswith("delete it or rerun the job")


def test_a_cache_that_fails_its_digest_is_rebuilt_from_checksummed_idx_files(tmp_path, monkeypatch):
    arrays = synthetic_arrays(n_train=200, n_test=50)
    write_idx_files(mnist_files.raw_dir(tmp_path), arrays)
    for name, sums in checksums_of(mnist_files.raw_dir(tmp_path)).items():  # these files are canonical here
        monkeypatch.setitem(mnist_files.CHECKSUMS, name, sums)
    mnist_arrays.save_cache(tmp_path, arrays)
    cache = torch.load(mnist_arrays.cache_path(tmp_path), weights_only=True)
    cache["train_labels"][:10] = (cache["train_labels"][:10] + 1) % 10  # changed after the digest was taken
    torch.save(cache, mnist_arrays.cache_path(tmp_path))

    loaded = mnist_arrays.load_arrays(tmp_path)
    assert torch.equal(loaded["train_labels"], torch.from_numpy(arrays["train_labels"]).to(torch.uint8))
    assert mnist_arrays.cache_problem(torch.load(mnist_arrays.cache_path(tmp_path), weights_only=True)) is None


def test_a_cache_saved_and_loaded_keeps_its_arrays(tmp_path):
    arrays = synthetic_arrays(n_train=200, n_test=50)
    mnist_arrays.save_cache(tmp_path, arrays)
    loaded = mnist_arrays.load_arrays(tmp_path)
    assert set(loaded) == set(mnist_arrays.ARRAYS)
    for key in mnist_arrays.ARRAYS:
        assert torch.equal(loaded[key], torch.from_numpy(arrays[key]))


def test_a_trainer_key_removed_with_a_tilde_falls_back_to_lightnings_default(tmp_path):
    from mnist_lab.cli.config_checks import check_config, check_required

    cfg = compose_train("~trainer.accelerator", f"data.data_dir={tmp_path}")
    assert "accelerator" not in cfg.trainer
    check_required(cfg)
    check_config(cfg)  # Lightning's Trainer then uses accelerator="auto"
