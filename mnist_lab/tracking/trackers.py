"""Experiment trackers beside TensorBoard: ``logger=csv``, ``mlflow``, ``wandb``, a list such as
``logger=[mlflow,csv]``, or ``logger=many`` (``conf/logger/``).

Each job is one tracker run. ``build_loggers`` makes Lightning's loggers (TensorBoard first: the
images and the HParams entry go there), ``start_trackers`` creates the runs with the job's
hyperparameters (the set of TensorBoard's HParams tab), and they get what TensorBoard gets:
every step's ``train/loss`` (``log_step_losses``, once per epoch from the device buffer) and,
through Lightning, the per-epoch and test metrics (a packed job's through ``log_as_lightning``,
as Lightning writes them). ``close_trackers`` ends every run when the job
ends, however it ends, with its status (ok, diverged, failed, interrupted), so the next job of
a sweep starts a run of its own.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from mnist_lab.tracking.event_files import append_scalars

PACKAGES = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}  # the rest need no extra package
MLFLOW_BATCH = 1000  # metrics per MlflowClient.log_batch call: MLflow's limit
MLFLOW_STATE = {"ok": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
DEFAULT_PROJECT = "mnist_lab"  # the MLflow experiment of single runs
SUMMARY = {"best_val_acc": "best/val_acc", "train_time_s": "train_time_s"}  # metrics.json -> tracker


def missing_package(target: str) -> str | None:
    """The package a logger class (its ``_target_``) needs, if it cannot be imported."""
    package = PACKAGES.get(target.rsplit(".", 1)[-1])
    if package is None:
        return None
    try:
        importlib.import_module(package)
    except ImportError:
        return package
    return None


def build_loggers(cfg: DictConfig, run_dir: Path, sweep_dir: Path | None = None) -> list[Logger]:
    """TensorBoard, then the trackers chosen in ``cfg.logger`` (config_checks has checked that
    their packages are there)."""
    _quiet()
    loggers: list[Logger] = [TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)]
    for node in (cfg.get("logger") or {}).values():
        target = node.get("_target_", "")
        cls = next((c for c in (MLFlowLogger, WandbLogger) if target.endswith("." + c.__name__)), None)
        filled = {
            key: value for key, value in _defaults(cls, run_dir, sweep_dir, node).items() if node.get(key) is None
        }
        loggers.append(instantiate(node, **filled))
    return loggers


def _quiet() -> None:
    """A run ends with one line, ours: not MLflow's links nor W&B's banner and sparklines."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("WANDB_SILENT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    logging.getLogger(MLFlowLogger.__module__).setLevel(logging.ERROR)  # "Experiment ... not found. Creating it."


def _defaults(cls: type | None, run_dir: Path, sweep_dir: Path | None, node: DictConfig) -> dict:
    """Settings left null in conf/logger/: the run's name and folder, the sweep as the group."""
    sweep = _shown(sweep_dir) if sweep_dir is not None else None
    name = run_dir.name if sweep_dir is not None else _shown(run_dir)
    if cls is MLFlowLogger:
        tags = {"run_dir": str(run_dir), **({"sweep": sweep} if sweep else {})}
        return {
            "experiment_name": sweep or DEFAULT_PROJECT,
            "run_name": name,
            "tags": tags,
            "artifact_location": _beside_sqlite(node.get("tracking_uri")),
        }
    if cls is WandbLogger:
        return {"save_dir": str(run_dir), "name": name, "group": sweep}
    return {"save_dir": str(run_dir)}  # CSVLogger, and Lightning's other file loggers


def _shown(path: Path) -> str:
    """A path as the user typed it: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _beside_sqlite(tracking_uri: str | None) -> str | None:
    """For a SQLite tracking URI, artifacts go to ``mlartifacts/`` beside the database file (not
    MLflow's default ``./mlruns`` in whatever folder the command ran); a server decides itself."""
    prefix = "sqlite:///"
    if not tracking_uri or not tracking_uri.startswith(prefix):
        return None
    database = Path(tracking_uri[len(prefix) :]).resolve()
    database.parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
    return (database.parent / "mlartifacts").as_uri()


def start_trackers(loggers: Sequence[Logger], hparams: dict) -> None:
    """Create each tracker's run with the job's hyperparameters (before any data is read, so a
    job that fails later has its run too)."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            _start_mlflow(logger)
        if not isinstance(logger, TensorBoardLogger):  # TensorBoard gets them with the results
            logger.log_hyperparams(hparams)


def _start_mlflow(logger: MLFlowLogger) -> None:
    """Create the experiment if need be, and the run; a server that does not answer is one
    sentence (MLflow's own message is a URL and a urllib3 traceback in words)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(2):
        try:
            logger.experiment  # noqa: B018 - the property creates them
            return
        except MlflowException as error:
            if "API request to" in str(error):
                import mlflow

                why = "connection refused" if "Connection refused" in str(error) else "no answer"
                raise ConnectionError(
                    f"cannot reach the MLflow server at {mlflow.get_tracking_uri()} ({why}); start it, or "
                    "set logger.mlflow.tracking_uri (the default, sqlite:///outputs/mlflow.db, needs no server)."
                ) from None
            if attempt:
                raise
            # else a parallel job of the sweep created the experiment first: now it is there


def log_step_losses(loggers: Sequence[Logger], first_step: int, losses: list[float]) -> None:
    """Every step's loss as ``train/loss`` at global steps ``first_step + 1, ...``."""
    steps = range(first_step + 1, first_step + 1 + len(losses))
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            # Lightning's log_metrics is one request per call: send an epoch's steps in batches.
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric("train/loss", value, now, step) for step, value in zip(steps, losses, strict=True)]
            for start in range(0, len(metrics), MLFLOW_BATCH):
                logger.experiment.log_batch(logger.run_id, metrics=metrics[start : start + MLFLOW_BATCH])
        elif isinstance(logger, TensorBoardLogger):  # straight to the file: batch-1 runs write 60,000 an epoch
            append_scalars(logger.experiment, "train/loss", steps, losses)
        else:
            for step, value in zip(steps, losses, strict=True):
                logger.log_metrics({"train/loss": value}, step)


def log_as_lightning(loggers: Sequence[Logger], logged: Sequence[dict], step: int, epoch: int) -> None:
    """Dicts of metrics (each one ``self.log_dict`` of a solo run's module) as Lightning's logger
    connector writes them: each with the trainer's ``epoch`` added, then each logger's ``save``
    (TensorBoard: its events flushed, and the first time its ``hparams.yaml``, empty, as a solo
    run's). Lightning saves after every dict; once after the last writes the same files."""
    for logger in loggers:
        for metrics in logged:
            logger.log_metrics({**metrics, "epoch": epoch}, step=step)
        logger.save()


def close_trackers(loggers: Sequence[Logger], record: dict, artifacts: dict[Path, str | None]) -> None:
    """End each tracker's run with the job's status; in MLflow, with ``artifacts`` (those of
    the files that exist, each into its artifact folder, None: the top). A tracker that cannot
    be reached is a warning: the run's own files are already written."""
    status = record.get("status", "failed")
    status = "failed" if status == "running" else status  # an error outside Lightning's loop
    summary = {name: float(record[key]) for key, name in SUMMARY.items() if record.get(key) is not None}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            continue  # RunRecord.finish and Lightning close it
        try:
            if isinstance(logger, MLFlowLogger):
                _close_mlflow(logger, status, summary, artifacts)
            elif isinstance(logger, WandbLogger):
                _close_wandb(logger, status, summary)
            else:
                logger.finalize("success" if status in ("ok", "diverged") else "failed")
        except Exception as error:  # noqa: BLE001 - a tracker's failure must not hide the run's
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(f"warning: {type(logger).__name__} could not finish its run: {reason}", file=sys.stderr)


def _close_mlflow(logger: MLFlowLogger, status: str, summary: dict, artifacts: dict[Path, str | None]) -> None:
    if getattr(logger, "_run_id", None) is None:
        return  # the run was never created
    from mlflow.entities import Metric

    client, run_id = logger.experiment, logger.run_id
    for path, folder in artifacts.items():
        if path.is_file():
            client.log_artifact(run_id, str(path), folder)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(name, value, now, 0) for name, value in summary.items()])
    client.set_tag(run_id, "status", status)
    client.set_terminated(run_id, MLFLOW_STATE.get(status, "FAILED"))


def log_sweep_report(logger_cfg: DictConfig | None, sweep_dir: Path, files: Sequence[Path]) -> None:
    """With ``logger=mlflow``: the sweep's report files as the artifacts of a run named "report"
    in the sweep's experiment (tagged ``kind=report``, beside the jobs' runs)."""
    node = (logger_cfg or {}).get("mlflow")
    if node is None or missing_package(node.get("_target_", "")) or not node.get("tracking_uri"):
        return
    from mlflow import MlflowClient

    _quiet()
    client = MlflowClient(node.tracking_uri)
    experiment = client.get_experiment_by_name(node.get("experiment_name") or _shown(sweep_dir))
    if experiment is None:
        return  # no job got as far as MLflow
    run = client.create_run(
        experiment.experiment_id, run_name="report", tags={"kind": "report", "sweep": _shown(sweep_dir)}
    )
    for path in files:
        if path.is_file():
            client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")


def _close_wandb(logger: WandbLogger, status: str, summary: dict) -> None:
    run = getattr(logger, "_experiment", None)
    if run is None:
        return  # the run was never created
    run.summary.update({"status": status, **summary})
    run.tags = (*(run.tags or ()), status)
    # Finishing is what makes the next job of a sweep start its own run (WandbLogger would
    # otherwise reuse this one).
    run.finish(exit_code=0 if status in ("ok", "diverged") else 1)
