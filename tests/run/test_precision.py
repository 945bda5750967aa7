"""Every trainer.precision Lightning offers trains or gets one sentence (tests/test_reliability.py
has the float16 ones): under 64-true and bf16-true the net's weights are float64 or bfloat16,
and every batch, the ones the callbacks draw included, follows them."""

from __future__ import annotations

import pytest

from tests.conftest import QUICK, read_metrics, run_cli


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["64-true", "bf16-true", "bf16-mixed"])
def test_a_run_trains_and_tests_in_each_precision(tmp_path, synthetic_data_dir, precision):
    run_dir = tmp_path / "run"
    result = run_cli(
        "mnist_lab.train",
        *QUICK,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        f"trainer.precision={precision}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "ok" and metrics["test_acc"] is not None and metrics["epochs"] == 1
