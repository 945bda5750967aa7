"""The eager training step makes no host sync: nothing in it waits for a tensor's value,
except the loss check every ``check_every`` steps (docs/performance.md)."""

from __future__ import annotations

import inspect

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import QUICK, compose_train
from tests.cpu_cuda_graph import HOST_SYNCS


class HostSyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_SYNCS:
            self.syncs.append(str(func))
        return func(*args, **kwargs or {})


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=adam", "scheduler=onecycle"],
        ["optimizer=sgd", "optimizer.momentum=0.9", "loss=mse", "model.batch_norm=true"],
        ["optimizer=rmsprop", "loss=l1", "model.dropout=0.2"],
        ["optimizer=adamw", "model=cnn", "model.channels=[4,8]", "model.fc=[16]", "data.batch_size=8"],
    ],
)
def test_training_steps_make_no_host_sync_between_loss_checks(tmp_path, synthetic_data_dir, monkeypatch, overrides):
    from mnist_lab.run import classifier, experiment

    counter, steps = HostSyncCounter(), []
    real_training_step = classifier.Classifier.training_step

    def counted_training_step(self, batch, batch_idx):
        with counter:
            real_training_step(self, batch, batch_idx)
        steps.append(self.epoch_log.steps)

    monkeypatch.setattr(classifier.Classifier, "training_step", counted_training_step)
    cfg = compose_train(
        *QUICK, f"data.data_dir={synthetic_data_dir}", "trainer.max_epochs=1", "data.batch_size=32", *overrides
    )
    assert experiment.run(cfg, tmp_path, [])["status"] == "ok"
    assert steps[-1] >= 75
    check_every = inspect.signature(classifier.Classifier).parameters["check_every"].default
    assert len(counter.syncs) == steps[-1] // check_every, counter.syncs  # one per loss check, nothing else
