"""Whose a run dir is: a run writes into its dir only once it has claimed it.

A run dir holding an earlier run's ``metrics.json`` is only reused to resume that run
(``ckpt_path=last``), and a resume writes nothing there until its checks have passed and it
trains or tests: a refused, failed or mistyped command leaves a finished run's record,
checkpoints and ``.hydra/`` as they were. Hydra's own ``.hydra/`` writing is off
(``hydra.output_subdir: null`` in conf/train.yaml) because Hydra writes it before any code of
ours runs; ``write_hydra_files`` writes the same three files once the dir is this run's.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mnist_lab.cli.config_error import ConfigError
from mnist_lab.records.atomic_files import write_atomic
from mnist_lab.records.metrics_file import record_or_empty
from mnist_lab.records.run_record import RunRecord

HYDRA_SUBDIR = ".hydra"


def claim_run_dir(cfg: DictConfig, run_dir: Path, record: RunRecord, sweep_dir: Path | None) -> None:
    """Make ``run_dir`` this run's, or raise ``ConfigError`` without writing anything.

    A fresh run writes its first record (status "running"). A resume of the run recorded
    there adopts that record and writes nothing yet (``RunRecord.adopt``). In a sweep, a folder
    with this job's number but other overrides means a second sweep is writing into the same
    sweep dir.
    """
    if rank_zero_only.rank > 0:  # a process Lightning started for another device: rank 0 claimed
        return
    ckpt_path = cfg.ckpt_path
    resuming = ckpt_path == "last" or (
        isinstance(ckpt_path, str) and ckpt_path != "" and Path(ckpt_path).resolve().is_relative_to(run_dir.resolve())
    )
    if ckpt_path == "last" and not record.path.exists() and sweep_dir is None:
        raise ConfigError(
            f"ckpt_path=last resumes the run in hydra.run.dir, but {run_dir} holds no run; add "
            "hydra.run.dir=<the dir of the run to resume> (its last line printed it)."
        )
    if sweep_dir is not None and not resuming:
        num = run_dir.name.split("_", 1)[0]
        others = sorted(
            d.name
            for d in sweep_dir.iterdir()
            if d.is_dir() and d.name != run_dir.name and (d.name == num or d.name.startswith(f"{num}_"))
        )
        if others:
            raise ConfigError(
                f"another sweep is writing into {sweep_dir}: it holds job {others[0]} besides "
                f"this sweep's {run_dir.name}; give each sweep its own hydra.sweep.dir."
            )
    if resuming and record.path.exists():
        record.adopt()
        return
    if not record.claim(exclusive=True):
        status = _status_of(record.path)
        where = (
            "or give this sweep its own hydra.sweep.dir."
            if sweep_dir is not None
            else "or give this run another hydra.run.dir (runs started in the same second share the default one)."
        )
        raise ConfigError(f"{run_dir} already holds a run (status {status}); add ckpt_path=last to resume it, " + where)


def _status_of(metrics_path: Path) -> str:
    return record_or_empty(metrics_path).get("status") or "unknown"


def resume_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from. ``last``: the run dir's last.ckpt, or None (start afresh)
    if no epoch finished before."""
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        return last if last.exists() else None
    return None if ckpt_path is None else Path(ckpt_path)


def write_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml`` (``cfg``, unresolved), ``hydra.yaml`` and ``overrides.yaml``, as
    Hydra writes them (rank 0 only; nothing outside a Hydra app)."""
    if rank_zero_only.rank > 0 or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}
    files = {"config.yaml": cfg, "hydra.yaml": hydra_cfg, "overrides.yaml": hydra_cfg.hydra.overrides.task}
    for name, node in files.items():
        write_atomic(run_dir / HYDRA_SUBDIR / name, OmegaConf.to_yaml(node).encode())
