"""A pack resumed from its jobs' checkpoints (``Pack.resume``, ``packed_resume``) trains on exactly as
the pack that was never stopped: every later step's loss, the final weights, optimizer state and
lr of each job."""

from __future__ import annotations

import io

import pytest
import torch

from tests.conftest import QUICK, compose_train

# Two jobs per case, 3 epochs of 10 steps (batch 250 of the 2,500 synthetic training images);
# each case mixes per-job settings that change which state torch keeps (momentum or none,
# centered or not), with a scheduler of each kind (per epoch, per step, on val/acc). "formulas":
# the optimizer's written-out update (its path off the CPU) instead of torch's functional one.
CASES = {
    "sgd_step_batchnorm": (
        ["optimizer=sgd", "optimizer.lr=0.05", "scheduler=step", "scheduler.step_size=1", "model.batch_norm=true"],
        [["optimizer.momentum=0.9", "optimizer.nesterov=true"], ["seed=1"]],
    ),
    "adam_onecycle_dropout": (
        ["optimizer.lr=0.003", "scheduler=onecycle", "model.dropout=0.2"],
        [[], ["seed=1", "optimizer.weight_decay=0.01"]],
    ),
    "rmsprop_plateau": (
        ["optimizer=rmsprop", "scheduler=plateau", "scheduler.patience=0", "optimizer.lr=0.01"],
        [["optimizer.centered=true", "optimizer.momentum=0.5"], ["seed=1"]],
    ),
    "rmsprop_plain_formulas": (  # no job keeps grad_avg or a momentum buffer: the update still reads them
        ["optimizer=rmsprop", "optimizer.lr=0.01"],
        [[], ["seed=1", "optimizer.alpha=0.9"]],
    ),
    "adam_amsgrad_formulas": (
        ["optimizer.lr=0.003", "optimizer.amsgrad=true"],
        [[], ["seed=1", "optimizer.betas=[0.8,0.99]"]],
    ),
    "adadelta_cnn": (
        ["optimizer=adadelta", "model=cnn_small", "model.channels=[4]", "model.fc=[16]"],
        [[], ["seed=1", "optimizer.lr=0.5"]],
    ),
}


def one_epoch(pack) -> torch.Tensor:
    """One epoch of the sweeps' epoch loop (validation and the schedules' epoch step included):
    its steps' losses ``[steps, M]``."""
    from mnist_lab.packed.training import pack_epochs

    return next(pack_epochs(pack)).losses


def last_ckpt(pack, i: int) -> dict:
    """What job ``i``'s last.ckpt holds that a resume reads (``packed_checkpoint.solo_checkpoint``),
    through torch.save and a weights-only load, as the file is written and read."""
    from mnist_lab.packed.checkpoint import optimizer_state

    schedulers = pack.schedules.schedulers
    checkpoint = {
        "epoch": pack.epoch - 1,
        "global_step": pack.steps_done,
        "state_dict": {f"net.{k}": v for k, v in pack.solo_net(i).state_dict().items()},
        "optimizer_states": [optimizer_state(pack, i)],
        "lr_schedulers": [schedulers[i].state_dict()] if schedulers else [],
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("case", list(CASES))
def test_a_pack_resumed_from_its_jobs_checkpoints_trains_on_as_the_uninterrupted_pack(case, synthetic_data_dir):
    from mnist_lab.packed.checkpoint import optimizer_state
    from mnist_lab.packed.pack import Pack

    shared, per_job = CASES[case]
    base = [*QUICK, f"data.data_dir={synthetic_data_dir}", "trainer.max_epochs=3", "data.batch_size=250", *shared]
    cfgs = [compose_train(*base, *overrides) for overrides in per_job]

    def pack():
        made = Pack(cfgs)
        made.optimizer.grouped = not case.endswith("formulas")
        return made

    uninterrupted = pack()
    losses = torch.cat([one_epoch(uninterrupted) for _ in range(3)])

    stopped = pack()
    one_epoch(stopped)
    checkpoints = [last_ckpt(stopped, i) for i in range(len(cfgs))]

    resumed = pack()
    resumed.resume(checkpoints)
    assert (resumed.epoch, resumed.steps_done) == (1, 10)
    later = torch.cat([one_epoch(resumed) for _ in range(2)])
    torch.testing.assert_close(later, losses[10:], rtol=1e-5, atol=0)
    for i in range(len(cfgs)):
        ours, theirs = resumed.solo_net(i).state_dict(), uninterrupted.solo_net(i).state_dict()
        for key, value in theirs.items():
            torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-7, msg=f"job {i} {key}")
        ours, theirs = optimizer_state(resumed, i), optimizer_state(uninterrupted, i)
        assert ours["param_groups"] == theirs["param_groups"]  # lr and what the scheduler set
        torch.testing.assert_close(ours["state"], theirs["state"], rtol=1e-5, atol=1e-7)
    assert resumed.schedules.current() == uninterrupted.schedules.current()


def test_jobs_stopped_at_different_epochs_do_not_share_a_resumed_pack(synthetic_data_dir):
    from mnist_lab.packed.pack import Pack

    cfgs = [compose_train(*QUICK, f"data.data_dir={synthetic_data_dir}", f"seed={s}") for s in range(2)]
    stopped = Pack(cfgs)
    one_epoch(stopped)
    with pytest.raises(ValueError, match="resume from the same epoch"):
        Pack(cfgs).resume([last_ckpt(stopped, 0), None])


def test_where_each_job_of_a_resumed_sweep_starts(tmp_path, synthetic_data_dir):
    """``start_of``: the epoch after its last.ckpt's; 0 (afresh) without a last.ckpt, as
    ``train.run`` starts such a job; None (alone) when finished or its checkpoint is refused."""
    import json

    from omegaconf import OmegaConf

    from mnist_lab.packed.resume import start_of

    def job(name: str, status: str | None, checkpoint) -> tuple:
        cfg = compose_train(*QUICK, f"data.data_dir={synthetic_data_dir}", "ckpt_path=last")
        run_dir = tmp_path / name
        if status is not None:
            run_dir.mkdir()
            (run_dir / "metrics.json").write_text(json.dumps({"status": status}))
        if checkpoint is not None:
            (run_dir / "checkpoints").mkdir()
            path = run_dir / "checkpoints" / "last.ckpt"
            if isinstance(checkpoint, bytes):
                path.write_bytes(checkpoint)
            else:
                config = OmegaConf.to_container(cfg, resolve=True)
                torch.save({**checkpoint, "hyper_parameters": {"config": config}, "state_dict": {}}, path)
        return cfg, run_dir

    never_started = job("never_started", None, None)
    assert start_of(*never_started) == 0 and never_started[0].ckpt_path is None  # packs as in a fresh sweep
    killed_in_epoch_1 = job("killed_in_epoch_1", "running", None)
    assert start_of(*killed_in_epoch_1) == 0 and killed_in_epoch_1[0].ckpt_path == "last"  # adopts its record
    assert start_of(*job("interrupted", "interrupted", {"epoch": 2})) == 3
    assert start_of(*job("failed", "failed", {"epoch": 0})) == 1
    assert start_of(*job("finished", "ok", {"epoch": 1})) is None
    assert start_of(*job("truncated", "running", b"not a checkpoint")) is None  # train.run says why
    assert start_of(*job("diverged_before", "interrupted", {"epoch": 0, "diverged_at": 5})) is None
