"""Which jobs of a sweep share a pack (``pack_groups``), from their composed configs."""

from __future__ import annotations

import pytest

from mnist_lab.models import MLP
from mnist_lab.packed.groups import split_into_packs, why_solo
from tests.conftest import QUICK, compose_train


@pytest.fixture(scope="module")
def job(synthetic_data_dir):
    def compose(*overrides: str):
        return compose_train(*QUICK, f"data.data_dir={synthetic_data_dir}", *overrides)

    return compose


def test_jobs_differing_only_in_what_may_differ_share_a_pack(job):
    cfgs = [
        job("optimizer.lr=0.01"),
        job("seed=3", "optimizer.betas=[0.8,0.9]", "loss=mse"),
        job("optimizer.weight_decay=0.1", "step.divergence_threshold=100"),
    ]
    assert split_into_packs(cfgs, 8) == [[0, 1, 2]]


def test_jobs_differing_in_what_must_match_go_to_separate_packs(job):
    cfgs = [
        job(),
        job("data.batch_size=32"),
        job("seed=1"),
        job("model.hidden=[64]"),
        job("optimizer=sgd"),
        job("data.batch_size=32", "seed=2"),
        job("optimizer=adam", "optimizer.amsgrad=true"),
        job("scheduler=step"),
        job("step.check_every=10"),
    ]
    assert split_into_packs(cfgs, 8) == [[0, 2], [1, 5], [3], [4], [6], [7], [8]]


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (["ckpt_path=runs/an_earlier_run/checkpoints/last.ckpt"], "resumes"),  # another run's checkpoint
        (["trainer=ddp_sim"], "one CPU or GPU"),
        (["step.cuda_graph=on"], "cuda_graph"),
        (["trainer.limit_train_batches=3"], "limit_train_batches"),
        (["callbacks.early_stopping.patience=2"], "early stopping"),
        (["trainer.precision=bf16-mixed"], "precision"),
        (["optimizer.lr=-1"], "refused"),
        (["++trainer.max_steps=50"], "max_steps"),
        (["+callbacks.swa._target_=lightning.pytorch.callbacks.StochasticWeightAveraging"], "callbacks.swa"),
        (["callbacks.checkpoint.filename=top"], "checkpoints"),
        (["+callbacks.checkpoint.save_top_k=0"], "checkpoints"),
    ],
)
def test_jobs_a_pack_cannot_reproduce_train_alone(job, overrides, reason):
    cfg = job(*overrides)
    assert reason in why_solo(cfg)
    assert split_into_packs([job(), cfg, job("seed=1")], 8) == [[0, 2], [1]]


def test_jobs_with_dropout_pack_whatever_their_rates(job):
    cfgs = [
        job("model.dropout=0.3"),
        job("seed=1"),
        job("seed=2", "model.dropout=0.5"),
        job("model=cnn_small", "model.conv_dropout=0.1", "model.dropout=0"),
        job("model=cnn_small", "seed=1", "model.conv_dropout=0", "model.dropout=0.4"),
    ]
    assert [why_solo(cfg) for cfg in cfgs] == [None] * 5
    assert split_into_packs(cfgs, 8) == [[0, 1, 2], [3, 4]]


def test_a_packs_remainder_of_one_trains_alone(job):
    cfgs = [job(f"seed={s}") for s in range(5)]
    reasons = {}
    assert split_into_packs(cfgs, 2, reasons=reasons) == [[0, 1], [2, 3], [4]]
    assert reasons == {4: "the remainder of its group after packs of 2"}
    assert split_into_packs(cfgs, lambda group: 1) == [[0], [1], [2], [3], [4]]


def test_a_group_packs_in_packs_of_equal_size_not_full_packs_and_a_job_alone(job):
    cfgs = [job(f"seed={s}") for s in range(16)]
    reasons = {}
    assert [len(u) for u in split_into_packs(cfgs, 5, reasons=reasons)] == [4, 4, 4, 4]
    assert reasons == {}
    assert [len(u) for u in split_into_packs(cfgs[:7], 5)] == [4, 3]
    assert split_into_packs(cfgs[:6], 16) == [list(range(6))]


def test_a_sweeps_plan_builds_each_distinct_net_once(job, monkeypatch):
    from mnist_lab.packed import groups

    judged = []
    judge = groups.model_reason
    monkeypatch.setattr(groups, "model_reason", lambda cfg: judged.append(list(cfg.model.hidden)) or judge(cfg))
    cfgs = [job(f"seed={s}") for s in range(6)] + [job("model.hidden=[64]", f"seed={s}") for s in range(2)]
    assert split_into_packs(cfgs, 16) == [[0, 1, 2, 3, 4, 5], [6, 7]]
    assert sorted(judged) == [[64], [128]]  # one build per net, not one per job
    assert why_solo(cfgs[0]) is None and len(judged) == 3  # asked alone: built again
    own = job(f"model._target_={__name__}.OwnForward", "seed=7")  # the same settings, another class
    assert split_into_packs([*cfgs[:2], own], 16) == [[0, 1], [2]]  # judged apart: it trains alone


class OwnForward(MLP):
    def forward(self, x):
        return super().forward(x) * 2


def test_gpu_jobs_pack_and_ask_for_the_cuda_graph_only_on_a_gpu(job, monkeypatch):
    assert "cuda_graph=on" in why_solo(job("trainer.accelerator=auto", "step.cuda_graph=on"))  # no GPU here
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # a GPU; trainer.accelerator=auto picks it
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert why_solo(job("trainer.accelerator=gpu")) is None
    assert why_solo(job("trainer.accelerator=gpu", "step.cuda_graph=on")) is None  # the pack's step is captured
    assert why_solo(job("trainer.accelerator=auto", "step.cuda_graph=on")) is None
    cycling = ["scheduler=onecycle", "scheduler.cycle_momentum=true"]  # a solo graph cannot follow momentum
    assert why_solo(job("trainer.accelerator=gpu", *cycling)) is None  # auto: its solo run goes eagerly
    assert "solo run cannot capture" in why_solo(job("trainer.accelerator=gpu", "step.cuda_graph=on", *cycling))
    assert "cuda_graph=on" in why_solo(job("trainer.accelerator=cpu", "step.cuda_graph=on"))
    cfgs = [job("trainer.accelerator=gpu"), job("trainer.accelerator=gpu", "seed=1"), job("seed=2"), job("seed=3")]
    cfgs += [job("trainer.accelerator=gpu", "step.cuda_graph=off", "seed=4")]
    assert split_into_packs(cfgs, 8) == [[0, 1], [2, 3], [4]]  # a pack's jobs share device and step


def test_a_resumed_sweeps_jobs_pack_by_the_epoch_they_resume_at(job):
    cfgs = [job("ckpt_path=last", f"seed={s}") for s in range(6)]
    # epochs after each job's last.ckpt (0: no checkpoint, it starts afresh); None: it runs alone
    assert split_into_packs(cfgs, 8, [1, 0, 1, None, 0, 2]) == [[0, 2], [1, 4], [3], [5]]
