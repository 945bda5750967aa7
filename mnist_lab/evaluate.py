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
import mnist_lab.cli.quiet_interrupt  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: on
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from mnist_lab import CONF_DIR
from mnist_lab.cli.hydra_errors import hydra_errors_as_sentences
from mnist_lab.cli.quick_exit import skip_final_collection
from mnist_lab.data.datamodule import DeviceBatches, device_tensors
from mnist_lab.records.atomic_files import replaced_atomically
from mnist_lab.records.checkpoint_loading import HOW_TO_PASS, buildable_setting, load_checkpoint, pick_device
from mnist_lab.run.evaluation import evaluate
from mnist_lab.tracking.drawn_images import confusion_matrix_image


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
        file, config, net, loss = load_checkpoint(cfg.ckpt_path, device, buildable_setting(cfg))
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
    skip_final_collection()
    with hydra_errors_as_sentences():
        main()
