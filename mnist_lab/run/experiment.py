"""One experiment, start to end: check its settings, claim its run dir, build data, net, loss,
optimizer and scheduler from the config, fit with Lightning, test the best checkpoint (by
val/acc) and record it all in ``metrics.json``. ``mnist_lab.train`` runs it for each job.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from mnist_lab.analysis.sweep import job_dirname  # noqa: F401  (registers ${job_dirname:...} for conf)
from mnist_lab.cli import sweep_clock
from mnist_lab.cli.config_checks import check_config, check_required
from mnist_lab.cli.config_error import ConfigError
from mnist_lab.cli.out_of_memory import as_config_error
from mnist_lab.records.checkpoint_checks import check_checkpoint
from mnist_lab.records.run_dir import claim_run_dir, resume_path, write_hydra_files
from mnist_lab.records.run_dir_checkpoint import AtomicCheckpointIO
from mnist_lab.records.run_record import RunRecord
from mnist_lab.run.classifier import Classifier
from mnist_lab.tracking.trackers import build_loggers, close_trackers, start_trackers


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
        if key == "logger" or key.startswith("logger."):
            continue  # where the results go, not what made them
        hparams.setdefault(key, OmegaConf.select(cfg, key, default=value))  # typed: 0.1, not "0.1"
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[L.Callback]:
    """One Lightning callback per entry of the ``callbacks`` group (conf/callbacks/default.yaml),
    but early stopping while its patience is null and the progress bar when no one watches."""
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if (name == "early_stopping" and node.get("patience") is None) or (
            name == "progress_bar" and not sys.stdout.isatty()
        ):
            continue
        kwargs = {"dirpath": run_dir / node.dirpath} if node.get("dirpath") else {}  # inside the run dir
        callbacks.append(instantiate(node, **kwargs))
    return callbacks


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback], loggers: list[Logger]) -> L.Trainer:
    callbacks = [*build_callbacks(cfg, run_dir), *callbacks]
    return L.Trainer(
        **cfg.trainer,
        plugins=[AtomicCheckpointIO()],
        logger=loggers,  # TensorBoard first: RunRecord.finish writes its HParams entry
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
    )


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], sweep_dir: Path | None = None):
    """Check the settings, fit, test and record one experiment; return its metrics.json content.

    Any error is recorded in metrics.json (status "failed" and the error's first line) before
    it propagates, so a sweep's report shows the job like any other. Ctrl-C or SIGTERM is
    recorded as status "interrupted" and the record returned.
    """
    check_required(cfg)  # the keys hparams_of and the claim read
    record = RunRecord(run_dir, overrides, hparams_of(cfg, overrides))
    claim_run_dir(cfg, run_dir, record, sweep_dir)  # raises, writing nothing, if not ours
    if not record.adopted:
        write_hydra_files(run_dir, cfg)
    loggers: list[Logger] = []
    try:
        check_config(cfg)
        resume = resume_path(cfg.ckpt_path, run_dir)
        check_checkpoint(cfg, resume)
        loggers = build_loggers(cfg, run_dir, sweep_dir)  # after every check: a refused job starts no tracker run
        start_trackers(loggers, record.hparams)
        if record.adopted:  # a resume that passed its checks: its settings are the run's now
            write_hydra_files(run_dir, cfg)
        return fit_and_test(cfg, run_dir, record, loggers, resume)
    except (KeyboardInterrupt, SystemExit) as stop:
        # Ctrl-C or SIGTERM (raise_terminated). Inside fit and test, Lightning records it
        # (RunRecord.on_exception) and calls sys.exit(1); elsewhere it arrives here as is.
        if isinstance(stop, KeyboardInterrupt):
            record.interrupt(stop)
        elif record.data["status"] != "interrupted":
            raise
        return record.data
    except Exception as error:
        if isinstance(error, InstantiationException) and error.__cause__ is not None:
            error = error.__cause__  # the constructor's own message, not Hydra's wrapper
        error = as_config_error(error, cfg)  # out of memory: what to lower
        record.fail(error)
        raise error from None
    finally:  # each tracker run ends with its status, before a sweep's next job starts its own
        artifacts = {run_dir / "checkpoints" / "best.ckpt": "checkpoints", record.path: None}
        close_trackers(loggers, record.data, artifacts)


def fit_and_test(
    cfg: DictConfig, run_dir: Path, record: RunRecord, loggers: list[Logger], resume: Path | None = None
) -> dict:
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    module = Classifier(
        net=instantiate(cfg.model),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        **cfg.step,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    trainer = build_trainer(cfg, run_dir, [record], loggers)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    if not module.history["val_acc"]:  # e.g. trainer.max_steps=0: an untrained net is no result
        raise ConfigError(
            "no training epoch ran (see trainer.limit_train_batches and "
            "trainer.max_steps), so there is nothing to test or record; allow at least one batch."
        )
    test = None
    if module.diverged_at is None:
        checkpoints = trainer.checkpoint_callback  # None with ~callbacks.checkpoint: test the last weights
        best = (checkpoints.best_model_path or None) if checkpoints else None
        with sweep_clock.timed("evaluation"):
            test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)[0]
    return record.finish(trainer, module, test)
