"""The CUDA-graph training step: taken on the GPU, refused with a reason elsewhere, and in
agreement with the eager step (same loss curve shape, final accuracy within 0.3 pp)."""

from __future__ import annotations

import statistics

import pytest
import torch

from tests.conftest import QUICK, compose_train, read_metrics, run_cli

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


def test_cpu_run_takes_the_eager_step_and_cuda_graph_on_is_refused(tmp_path, synthetic_data_dir):
    from mnist_lab.run.step_factory import graph_unsupported_reason

    assert graph_unsupported_reason(torch.optim.Adam, None, torch.device("cpu")) == "the model is not on a CUDA device"
    result = run_cli(
        "mnist_lab.train",
        *QUICK,
        "step.cuda_graph=on",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
        check=False,
    )
    assert result.returncode != 0
    assert "step.cuda_graph=on but the model is not on a CUDA device; use step.cuda_graph=auto." in result.stderr
    assert "Traceback" not in result.stderr


def run_on_gpu(tmp_path, name: str, *overrides: str) -> dict:
    """Real MNIST from $MNIST_LAB_DATA_DIR (or ./data)."""
    run_dir = tmp_path / name
    run_cli(
        "mnist_lab.train",
        "trainer.accelerator=gpu",
        "trainer.max_epochs=3",
        *overrides,
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    return read_metrics(run_dir)


@needs_cuda
@pytest.mark.parametrize(
    "overrides",
    [
        ["model=mlp", "model.hidden=[64,128,64]", "model.batch_norm=true", "model.dropout=0.1"],
        ["model=cnn", "optimizer=adamw", "optimizer.weight_decay=0.01", "scheduler=onecycle"],
        ["model=mlp", "optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "scheduler=step"],
        ["model=mlp", "optimizer=rmsprop", "optimizer.weight_decay=1e-4"],
    ],
)
def test_graph_and_eager_steps_agree_over_three_seeds(tmp_path, overrides):
    """Real MNIST on the GPU: mean final test accuracy within 0.3 pp, loss curves alike."""
    graph, eager = [], []
    for seed in (1, 2, 3):
        graph.append(run_on_gpu(tmp_path, f"g{seed}", *overrides, f"seed={seed}", "step.cuda_graph=on"))
        eager.append(run_on_gpu(tmp_path, f"e{seed}", *overrides, f"seed={seed}", "step.cuda_graph=off"))
    gap = statistics.mean(m["test_acc"] for m in graph) - statistics.mean(m["test_acc"] for m in eager)
    print(f"{' '.join(overrides)}: graph - eager test acc = {100 * gap:+.2f} pp")
    assert abs(gap) <= 0.003
    for g, e in zip(graph, eager, strict=True):
        assert g["train_loss"][-1] < g["train_loss"][0] and e["train_loss"][-1] < e["train_loss"][0]
        assert g["train_loss"][-1] == pytest.approx(e["train_loss"][-1], rel=0.35)


@pytest.fixture
def emulated_cuda_graph(monkeypatch):
    """The graph path on CPU, captured and replayed by ``tests/cpu_cuda_graph.py``: frozen
    Python values, host syncs during capture and freed tensors fail as on a GPU. This checks
    what CI cannot run: static input buffers, the restore of weights and optimizer state after
    the warm-up, the eagerly run ragged last batch, the tensor lr of a scheduled run, and the
    gradients Lightning frees before validation."""
    from mnist_lab.run import step_factory
    from tests import cpu_cuda_graph

    cpu_cuda_graph.install(monkeypatch)
    real_reason = step_factory.graph_unsupported_reason

    def reason_ignoring_device(*args, **kwargs):
        reason = real_reason(*args, **kwargs)
        return None if reason == "the model is not on a CUDA device" else reason

    monkeypatch.setattr(step_factory, "graph_unsupported_reason", reason_ignoring_device)


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "scheduler=step"],
        ["optimizer=adamw", "optimizer.weight_decay=0.01", "scheduler=onecycle", "model.batch_norm=true"],
        ["optimizer=rmsprop", "optimizer.lr=0.001"],
        ["optimizer=adam", "loss=mse", "scheduler=plateau", "scheduler.patience=0", "model.dropout=0.3"],
        ["optimizer=adadelta", "loss=l1", "scheduler=cosine"],
        [
            "model=cnn",
            "model.channels=[4,8]",
            "model.fc=[16]",
            "model.dropout=0",
            "model.conv_dropout=0",
            "optimizer=rmsprop",
            "optimizer.momentum=0.9",
            "optimizer.centered=true",
            "scheduler=exponential",
        ],
    ],
)
def test_emulated_graph_step_matches_the_eager_step_on_cpu(
    tmp_path, synthetic_data_dir, emulated_cuda_graph, overrides, capsys
):
    graph, eager = train_with_cuda_graph(tmp_path, synthetic_data_dir, overrides, "on", "off")
    assert "CUDA graph off" not in capsys.readouterr().out  # the graph passed its self-check
    assert graph["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    assert graph["val_acc"] == pytest.approx(eager["val_acc"], abs=1e-6)
    assert graph["lr"] == pytest.approx(eager["lr"], rel=1e-6)


def train_with_cuda_graph(tmp_path, data_dir, overrides: list[str], *modes: str) -> list[dict]:
    """metrics.json of one CPU run per step.cuda_graph mode, all else equal."""
    from mnist_lab.run import experiment

    # batch 96 leaves a ragged last batch (2500 % 96 = 4), which runs eagerly on the graph path
    common = [*QUICK, "data.batch_size=96", f"data.data_dir={data_dir}", *overrides]
    runs = []
    for mode in modes:
        runs.append(experiment.run(compose_train(*common, f"step.cuda_graph={mode}"), tmp_path / mode, []))
        assert runs[-1]["status"] == "ok"
    return runs


def test_a_failed_capture_falls_back_to_the_eager_step_from_the_same_start(
    tmp_path, synthetic_data_dir, emulated_cuda_graph, monkeypatch, capsys
):
    """SGD's foreach step reads a tensor lr with a host sync, which capture refuses: with
    step.cuda_graph=auto the run says so and goes on eagerly, from the weights it had."""
    from mnist_lab.run import step_factory

    monkeypatch.setattr(step_factory, "graph_optimizer_kwargs", lambda make_optimizer: {})
    overrides = ["optimizer=sgd", "optimizer.momentum=0.9", "scheduler=step"]
    fallback, eager = train_with_cuda_graph(tmp_path, synthetic_data_dir, overrides, "auto", "off")
    assert (
        "CUDA graph off: capturing the training step failed (operation not permitted when stream is capturing"
        in capsys.readouterr().out
    )
    assert fallback["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-6)


def test_a_graph_that_fails_its_self_check_gives_way_to_the_eager_step(
    tmp_path, synthetic_data_dir, emulated_cuda_graph, monkeypatch, capsys
):
    """A graph broken on purpose (it replays half the step): the run says why and goes on
    eagerly from the weights it had, as if the graph had never been captured."""
    from tests.cpu_cuda_graph import HalfReplayedGraph

    monkeypatch.setattr(torch.cuda, "CUDAGraph", HalfReplayedGraph)
    overrides = ["optimizer=sgd", "optimizer.momentum=0.9", "trainer.max_epochs=1"]
    fallback, eager = train_with_cuda_graph(tmp_path, synthetic_data_dir, overrides, "auto", "off")
    assert "CUDA graph off: the captured step disagrees with the eager step (loss " in capsys.readouterr().out
    assert fallback["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)


def test_a_scheduler_that_cycles_momentum_keeps_the_eager_step():
    import functools

    from mnist_lab.run.step_factory import graph_unsupported_reason

    def reason(**scheduler_args):
        scheduler = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, **scheduler_args)
        return graph_unsupported_reason(torch.optim.SGD, scheduler, torch.device("cpu"))

    expected = "the scheduler cycles momentum (cycle_momentum=true), which the captured step reads as a constant"
    assert reason() == reason(cycle_momentum=True) == expected  # one-cycle's default is true
    assert reason(cycle_momentum=False) == "the model is not on a CUDA device"


def test_grouped_small_batches_train_exactly_like_one_batch_per_loop_step(tmp_path, synthetic_data_dir, monkeypatch):
    """At batch 4 the loader hands Lightning groups of 8 batches (data.SAMPLES_PER_CALL); the
    run must be the same, step for step, as with one batch per loop step."""
    from mnist_lab.data import datamodule as data
    from mnist_lab.run import experiment

    overrides = [
        *QUICK,
        "trainer.max_epochs=1",
        "data.batch_size=4",
        "scheduler=onecycle",
        f"data.data_dir={synthetic_data_dir}",
    ]
    cfg = compose_train(*overrides)
    grouped = experiment.run(cfg, tmp_path / "grouped", [])
    monkeypatch.setattr(data, "SAMPLES_PER_CALL", 1)
    single = experiment.run(cfg, tmp_path / "single", [])
    assert grouped["status"] == single["status"] == "ok"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "test_acc"):
        assert grouped[key] == single[key], key


def test_a_resumed_run_keeps_its_scheduled_lr_on_the_graph_path(tmp_path, synthetic_data_dir, emulated_cuda_graph):
    """A checkpoint from an eager (CPU) run brings lr as a Python float and SGD's flags as built
    eagerly (no fused kernel): resumed on the graph path, lr must go back into a device tensor
    (or the graph would freeze it) and SGD to its fused step (or capture meets a host sync)."""
    schedule = ["optimizer=sgd", "optimizer.lr=0.05", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.3"]
    (first,) = train_with_cuda_graph(tmp_path / "first", synthetic_data_dir, [*schedule, "trainer.max_epochs=1"], "off")
    last = tmp_path / "first" / "off" / "checkpoints" / "last.ckpt"
    resume = [*schedule, "trainer.max_epochs=3", f"ckpt_path={last}"]
    graph, eager = train_with_cuda_graph(tmp_path, synthetic_data_dir, resume, "on", "off")
    assert len(graph["lr"]) == 3 and graph["lr"][2] < graph["lr"][1] < first["lr"][0]
    assert graph["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    assert graph["lr"] == pytest.approx(eager["lr"], rel=1e-6)


def test_a_second_fit_of_the_same_module_captures_a_new_graph(tmp_path, synthetic_data_dir, emulated_cuda_graph):
    """Each fit builds a new optimizer: a graph kept from the first fit would replay on its
    freed state (Lightning's Tuner, or a notebook calling fit again)."""
    import lightning as L

    from mnist_lab.data.datamodule import MNISTDataModule
    from mnist_lab.models import MLP
    from mnist_lab.run.classifier import Classifier

    module = Classifier(MLP(), torch.nn.CrossEntropyLoss(), torch.optim.Adam, cuda_graph="on")
    data = MNISTDataModule(str(synthetic_data_dir), batch_size=96, val_size=500)
    graphs = []
    for _ in range(2):
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=data)
        graphs.append(module.step.graph)
    assert graphs[0] is not None and graphs[1] is not None and graphs[1] is not graphs[0]
    assert module.history["train_loss"][1] < module.history["train_loss"][0]
