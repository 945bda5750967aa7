"""Seconds per training epoch, four ways, in one process: same model, batch and data.

  (a) ours      mnist_lab's trainer through Lightning, as `python -m mnist_lab.train` runs it
  (b) eager     a plain PyTorch loop over device-resident tensors, Adam as torch builds it
      eager_fused (CPU only) the same loop with Adam's fused kernel, as ours uses on CPU: the
                gap between (a) and this is what Lightning and our bookkeeping cost
  (c) graph     (CUDA only) the same step captured once as a CUDA graph and replayed
  (d) loader    the usual path: torchvision MNIST + ToTensor/Normalize through a DataLoader
                (0 workers) into a LightningModule that logs the loss every step

Model: the MLP lightning-hydra-template ships (784-64-128-64-10, BatchNorm, ReLU), Adam 1e-3,
first 55,000 training images (val_size=5000), as in ../shared/anchors. Each figure is the
median of ``--epochs`` epochs after one warm-up epoch.

    python -m benchmarks.epoch [--device cpu|cuda] [--batch 128] [--epochs 3] [--skip loader]
    python -m benchmarks.epoch --model mlp --batch 1 --skip loader   # online learning
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mnist_lab import CONF_DIR
from mnist_lab.data.datamodule import MNISTDataModule
from mnist_lab.data.mnist_arrays import MEAN, STD
from mnist_lab.run import experiment

MODELS = {
    "bench": ["model=mlp", "model.hidden=[64,128,64]", "model.batch_norm=true"],  # the anchors' MLP
    "mlp": ["model=mlp"],  # conf/model/mlp.yaml, no batch norm: the one for batch_size=1
}
MODEL = MODELS["bench"]


def config(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*MODEL, *overrides])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_epochs(epoch, epochs: int, device: str) -> list[float]:
    epoch()  # warm-up
    sync(device)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        epoch()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def ours(device: str, batch: int, epochs: int, data_dir: str, extra: list[str] = ()) -> dict:
    accelerator = "gpu" if device == "cuda" else "cpu"
    overrides = [
        f"data.batch_size={batch}",
        f"trainer.max_epochs={epochs + 1}",
        "data.val_size=5000",
        f"trainer.accelerator={accelerator}",
        f"data.data_dir={data_dir}",
        *extra,
    ]
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        metrics = experiment.run(config(*overrides), Path(run_dir), overrides)
        wall = time.perf_counter() - started
    return {"epoch_s": metrics["epoch_time_s"][1:], "fit_and_test_wall_s": wall, "test_acc": metrics["test_acc"]}


def train_tensors(data_dir: str, device: str):
    dm = MNISTDataModule(data_dir, val_size=5000)
    dm.prepare_data()
    dm.setup("fit")
    return dm.tensors["train_x"].to(device), dm.tensors["train_y"].to(device)


@contextlib.contextmanager
def as_plain_pytorch():
    """Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, which makes every
    torch.cuda.is_available() (Adam calls it each step) an NVML query; a plain script has no
    Lightning, so time the plain loops without it."""
    saved = os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved


def eager_loop(device: str, batch: int, epochs: int, data_dir: str, fused: bool | None = None) -> dict:
    x, y = train_tensors(data_dir, device)
    net = instantiate(config().model).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3, fused=fused)

    def epoch():
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x), batch):
            rows = perm[i : i + batch]
            loss = F.cross_entropy(net(x[rows]), y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    with as_plain_pytorch():
        return {"epoch_s": timed_epochs(epoch, epochs, device)}


def graph_loop(device: str, batch: int, epochs: int, data_dir: str) -> dict:
    x, y = train_tensors(data_dir, device)
    net = instantiate(config().model).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3, capturable=True)
    n = len(x) // batch * batch
    rows = torch.zeros(batch, dtype=torch.long, device=device)

    def step():
        loss = F.cross_entropy(net(x[rows]), y[rows])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    def epoch():
        for chunk in torch.randperm(len(x), device=device)[:n].view(-1, batch):
            rows.copy_(chunk)
            graph.replay()

    return {"epoch_s": timed_epochs(epoch, epochs, device)}


class _LoggedModule(L.LightningModule):
    """What lightning-hydra-template's MNIST module does per step: forward, loss, self.log."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-3)


class _EpochTimer(L.Callback):
    def __init__(self, device: str):
        self.device, self.times = device, []

    def on_train_epoch_start(self, trainer, module):
        sync(self.device)
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        sync(self.device)
        self.times.append(time.perf_counter() - self.started)


def loader_path(device: str, batch: int, epochs: int, data_dir: str) -> dict:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = Subset(datasets.MNIST(data_dir, train=True, transform=transform), range(55_000))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    timer = _EpochTimer(device)
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_epochs=epochs + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(_LoggedModule(instantiate(config().model)), train_dataloaders=loader)
    return {"epoch_s": timer.times[1:]}


RUNNERS = {
    "ours": ours,
    "eager": eager_loop,
    "eager_fused": functools.partial(eager_loop, fused=True),
    "graph": graph_loop,
    "loader": loader_path,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=list(MODELS), default="bench")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="data")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(RUNNERS))
    parser.add_argument(
        "--ours-extra",
        nargs="*",
        default=[],
        help="more overrides for (a) only, e.g. step.cuda_graph=off; the model comes from --model",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    global MODEL
    MODEL = MODELS[args.model]
    torch.set_float32_matmul_precision("high")
    results = {}
    for name, runner in RUNNERS.items():
        if (
            name in args.skip
            or (name == "graph" and args.device != "cuda")
            or (
                name == "eager_fused" and args.device != "cpu"  # on CUDA ours uses the graph, compared with (c)
            )
        ):
            continue
        kwargs = {"extra": args.ours_extra} if name == "ours" else {}
        result = runner(args.device, args.batch, args.epochs, args.data, **kwargs)
        result["median_s"] = statistics.median(result["epoch_s"])
        results[name] = result
        each = ", ".join(f"{t:.3f}" for t in result["epoch_s"])
        print(f"{name:11s} median {result['median_s']:.3f} s/epoch  ({each})", flush=True)
    if "ours" in results:
        for name in ("eager", "eager_fused", "graph", "loader"):
            if name in results:
                print(f"ours / {name}: {results['ours']['median_s'] / results[name]['median_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
