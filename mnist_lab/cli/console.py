"""What a training run prints: one line of settings, the progress bar (on a terminal only), one
line of results (``summary_line``) and an error as one line (``first_line``). Lightning's notes
(devices found, a cloud-logging advertisement, why fit stopped, which checkpoint the test
loads) and a deprecation warning from inside Lightning are dropped here: they say nothing about
the run. ``print_config=true`` shows the resolved config as a tree first.
"""

from __future__ import annotations

import logging
import warnings

from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

# Lightning's rank-zero info lines that a run does not print (prefixes).
LIGHTNING_NOTES = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip:",
    "`Trainer.fit` stopped:",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
)


class _DropNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_NOTES)


def quiet_lightning() -> None:
    """Drop Lightning's start-up notes (once per process); keep its warnings and errors."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotes) for f in logger.filters):
            logger.addFilter(_DropNotes())
    # lightning 2.6's own use of torch's pytree API (lightning/pytorch/utilities/_pytree.py)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def settings_line(cfg: DictConfig) -> str:
    """The run's settings in one line: model, optimizer, loss, batch size, epochs, seed."""

    def get(key: str):
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)

    def name(key: str) -> str:
        return str(get(f"{key}._target_")).rsplit(".", 1)[-1]

    shape = get("model.hidden") if get("model.hidden") is not None else get("model.channels")
    shape = shape if isinstance(shape, ListConfig) else None  # a model of the user's own may mean other things
    model = f"{name('model')} {list(shape)}" if shape is not None else name("model")
    if shape is not None and len(shape) == 0 and name("model") == "MLP":
        model = "softmax regression"
    return (
        f"train {model} · {name('optimizer')} lr={get('optimizer.lr')} · {name('loss')} · "
        f"batch {get('data.batch_size')} · epochs {get('trainer.max_epochs')} · seed {get('seed')}"
    )


def config_tree(cfg: DictConfig) -> Tree:
    """The resolved config, one branch per top-level key, each as YAML."""
    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        if key == "hydra":
            continue
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else f"{value}\n"
        tree.add(str(key)).add(Syntax(text.rstrip("\n"), "yaml", background_color="default"))
    return tree


def print_config(cfg: DictConfig) -> None:
    Console().print(config_tree(cfg))


def summary_line(metrics: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{v:.4f}"

    return (
        f"[{metrics['status']}] test/acc {pct(metrics.get('test_acc'))}  "
        f"val/acc {pct(metrics.get('best_val_acc'))}  time {metrics.get('train_time_s', 0):.1f}s  "
        f"run {metrics['run_dir']}"
    )


def first_line(exception: BaseException) -> str:
    """An error as metrics.json's ``error`` holds it: its type and its message's first line."""
    text = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {text[0] if text else ''}".rstrip(": ")
