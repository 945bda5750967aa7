"""Evaluate a trained model on the MNIST test set.

    python -m mnist_lab.evaluate ckpt_path=outputs/2024-05-01/12-00-00      # its best.ckpt
    python -m mnist_lab.evaluate ckpt_path=path/to/last.ckpt device=cpu

Prints the test loss and accuracy and a per-class accuracy table, and writes the confusion
matrix as ``<checkpoint name>.confusion_matrix.png`` beside the checkpoint. The net and loss
are rebuilt from the run config that ``Classifier`` stores in every checkpoint, so this works
for every model a run can train.
"""

from __future__ import annotations

# isort: off
import mnist_lab.quiet_interrupt  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: on
import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch import nn

from mnist_lab import CONF_DIR
from mnist_lab.atomic_files import replaced_atomically
from mnist_lab.data import DeviceBatches, device_tensors
from mnist_lab.drawn_images import confusion_matrix_image
from mnist_lab.hydra_errors import hydra_errors_as_sentences
from mnist_lab.metrics_file import first_line
from mnist_lab.tensorboard_images import batched_logits, confusion_matrix

HOW_TO_PASS = "pass a run dir (outputs/<date>/<time>) or a .ckpt file written by mnist_lab.train"
# What a checkpoint's run config may name as ``_target_``: instantiating anything else would run
# code chosen by whoever wrote the file, although weights_only=True kept its unpickling safe.
BUILDABLE = ("mnist_lab.models.", "mnist_lab.losses.", "torch.nn.")


class CheckpointError(ValueError):
    """The path given is not a checkpoint this package can rebuild a model from."""


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The .ckpt file for ``path``: the file itself, or a run dir's best (else last) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "best.ckpt", "last.ckpt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a directory with no checkpoints/best.ckpt in it; {HOW_TO_PASS}.")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {HOW_TO_PASS}.")
    return path


def load_checkpoint(path: str | os.PathLike, device: torch.device) -> tuple[Path, dict, nn.Module, nn.Module]:
    """(checkpoint file, run config, net in eval mode on ``device``, loss) from a checkpoint."""
    file = checkpoint_file(path)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file at all, or one that holds arbitrary Python objects
        raise CheckpointError(f"{file} is not a PyTorch checkpoint; {HOW_TO_PASS}.") from None
    config = checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
    if (
        not isinstance(config, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
        or not all(isinstance(config.get(part), dict) for part in ("model", "loss"))
    ):
        raise CheckpointError(f"{file} holds no mnist_lab run config, so the net cannot be rebuilt; {HOW_TO_PASS}.")
    for part in ("model", "loss"):
        target = _foreign_target(config.get(part))
        if target:
            raise CheckpointError(
                f"{file} asks to build {target} as its {part}, which is not a model or loss of "
                f"mnist_lab or torch.nn, and is not run; {HOW_TO_PASS}."
            )
    prefix = "net."
    weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    try:  # a config or weights changed by hand: the constructor's or torch's first line
        net = instantiate(config["model"])
        net.load_state_dict(weights)
        loss = instantiate(config["loss"])
    except Exception as error:  # noqa: BLE001  (constructors raise anything)
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        raise CheckpointError(
            f"{file} does not rebuild into a net ({first_line(cause)}); it was not "
            f"written by mnist_lab.train as it is; {HOW_TO_PASS}."
        ) from None
    return file, config, net.to(device).eval(), loss.to(device)


def _foreign_target(node) -> str | None:
    """The first ``_target_`` in a config tree that is not in BUILDABLE (or not a string)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if "_target_" in node and not (isinstance(target, str) and target.startswith(BUILDABLE)):
            return repr(target)
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    return next((found for child in children if (found := _foreign_target(child))), None)


def pick_device(name: str) -> torch.device:
    """``auto`` (the GPU if there is one), ``cpu`` or ``cuda``, checked: a ValueError says what to use."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not str(name).startswith("cuda:"):
        raise ValueError(f"device={name} is not a device here; use device=auto, cpu or cuda.")
    if name != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but this machine has no CUDA GPU; use device=cpu or device=auto.")
    return torch.device(name)


def evaluate(net: nn.Module, loss: nn.Module, batches, device: torch.device) -> dict:
    """Test loss (mean over images), accuracy and the confusion matrix."""
    loss_sum, count = torch.zeros((), device=device), 0

    def scored():
        nonlocal loss_sum, count
        for logits, _, y in batched_logits(net, batches, device):
            loss_sum += loss(logits, y) * len(y)
            count += len(y)
            yield logits, y

    counts = confusion_matrix(scored(), device).cpu()
    return {
        "test_loss": float(loss_sum) / count,
        "test_acc": float(counts.trace() / counts.sum()),
        "confusion": counts,
    }


def per_class_table(confusion: torch.Tensor) -> Table:
    table = Table(
        "digit",
        "images",
        "correct",
        "accuracy",
        "most often taken for",
        title="test set, per class",
    )
    for digit, row in enumerate(confusion.tolist()):
        others = [(n, other) for other, n in enumerate(row) if other != digit and n > 0]
        worst = f"{max(others)[1]} ({max(others)[0]}×)" if others else "-"
        total = sum(row)
        accuracy = f"{row[digit] / total:.4f}" if total else "-"
        table.add_row(str(digit), str(total), str(row[digit]), accuracy, worst)
    return table


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        sys.exit(f"error: no checkpoint given; {HOW_TO_PASS}: python -m mnist_lab.evaluate ckpt_path=...")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        sys.exit(f"error: batch_size={cfg.batch_size} is not a whole number of images ≥ 1; use e.g. batch_size=10000.")
    try:
        device = pick_device(cfg.device)
        file, config, net, loss = load_checkpoint(cfg.ckpt_path, device)
    except ValueError as error:  # CheckpointError is one
        sys.exit(f"error: {error}")
    data = device_tensors(cfg.data_dir, device, config["data"].get("normalize", True))
    results = evaluate(net, loss, DeviceBatches(data["test_x"], data["test_y"], cfg.batch_size), device)

    model = config["model"]["_target_"].rsplit(".", 1)[-1]
    print(f"checkpoint {file}  ({model}, {config['loss']['_target_'].rsplit('.', 1)[-1]})")
    print(
        f"test/loss {results['test_loss']:.4f}  test/acc {results['test_acc']:.4f}  "
        f"({int(results['confusion'].sum()):,} images)"
    )
    Console().print(per_class_table(results["confusion"]))
    png = file.with_name(f"{file.stem}.confusion_matrix.png")
    title = f"{model}, test acc {results['test_acc']:.4f}: true vs predicted digit"
    with replaced_atomically(png) as tmp:
        confusion_matrix_image(results["confusion"], title).save(tmp, format="png")
    print(f"confusion matrix: {png}")


if __name__ == "__main__":
    with hydra_errors_as_sentences():
        main()
