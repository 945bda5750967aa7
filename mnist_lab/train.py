"""Train one experiment: ``python -m mnist_lab.train [group=option ...] [key=value ...]``.

Builds data, net, loss, optimizer and scheduler from the Hydra config (``conf/``), fits with
Lightning, tests the best checkpoint (by val/acc) and writes ``metrics.json``, checkpoints and
TensorBoard events into the run dir. ``--multirun`` runs a grid; see README.md.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from mnist_lab.classifier import Classifier
from mnist_lab.run_record import RunRecord, first_line
from mnist_lab.sweep import job_dirname  # noqa: F401  (registers ${job_dirname:...} for conf)
from mnist_lab.tensorboard_images import TensorBoardImages

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
NOT_TRAINER_ARGS = ("cuda_graph",)  # keys of conf/trainer read by the classifier instead


def hparams_of(cfg: DictConfig, overrides: list[str]) -> dict:
    """What TensorBoard's HParams tab compares: the swept keys plus the usual suspects."""
    hparams = {
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "loss": cfg.loss._target_.rsplit(".", 1)[-1] + (f":{cfg.loss.distance}" if "distance" in cfg.loss else ""),
        "lr": cfg.optimizer.lr,
        "batch_size": cfg.data.batch_size,
    }
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        hparams.setdefault(key, value)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback]) -> L.Trainer:
    trainer_args = {k: v for k, v in cfg.trainer.items() if k not in NOT_TRAINER_ARGS}
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/acc", mode="max",
        save_last=True, enable_version_counter=False,
        save_on_train_epoch_end=True,  # after the epoch's history row and scheduler step: resumable
    )  # fmt: skip
    callbacks = [checkpoints, TensorBoardImages(), *callbacks]
    if cfg.early_stopping.patience is not None:
        callbacks.append(EarlyStopping("val/acc", mode="max", patience=cfg.early_stopping.patience))
    if sys.stdout.isatty():
        callbacks.append(RichProgressBar(refresh_rate=25))
    return L.Trainer(
        **trainer_args,
        logger=TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False),
        callbacks=callbacks,
        enable_progress_bar=sys.stdout.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
    )


def resume_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    if ckpt_path == "last":
        return str(run_dir / "checkpoints" / "last.ckpt")
    return ckpt_path


def run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Fit, test and record one experiment; return its metrics.json content.

    Any error is recorded in metrics.json (status "failed" and the error's first line) before
    it propagates, so a sweep's report shows the job like any other.
    """
    record = RunRecord(run_dir, overrides, hparams_of(cfg, overrides))
    try:
        return fit_and_test(cfg, run_dir, record)
    except Exception as error:
        if isinstance(error, InstantiationException) and error.__cause__ is not None:
            error = error.__cause__  # the constructor's own message, not Hydra's wrapper
        record.fail(error)
        raise error from None


def fit_and_test(cfg: DictConfig, run_dir: Path, record: RunRecord) -> dict:
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    module = Classifier(
        net=instantiate(cfg.model),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        cuda_graph=cfg.trainer.cuda_graph,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    trainer = build_trainer(cfg, run_dir, [record])
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg.ckpt_path, run_dir))
    test = None
    if module.diverged_at is None:
        best = trainer.checkpoint_callback.best_model_path or None
        test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)[0]
    return record.finish(trainer, module, test)


def summary_line(metrics: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{v:.4f}"

    return (
        f"[{metrics['status']}] test/acc {pct(metrics.get('test_acc'))}  "
        f"val/acc {pct(metrics.get('best_val_acc'))}  time {metrics.get('train_time_s', 0):.1f}s  "
        f"run {metrics['run_dir']}"
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        metrics = run(cfg, run_dir, overrides)
    except Exception as error:
        if hydra_cfg.mode == RunMode.MULTIRUN:  # one bad job must not end the sweep
            print(f"[failed] {first_line(error)}  run {run_dir}", file=sys.stderr)
            return math.nan
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(summary_line(metrics))
    best = metrics.get("best_val_acc")
    return best if best is not None else math.nan


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
