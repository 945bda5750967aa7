"""``hydra/launcher=packed`` (conf/hydra/launcher/packed.yaml): the Launcher class Hydra
instantiates. Hydra takes launchers only from the ``hydra_plugins`` package, and imports every
module of it when any Hydra app starts, so this one imports no torch: the work is done in
``mnist_lab.packed.launch``, imported when a sweep launches."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


def as_typed(value) -> str:
    """A setting's value as it is typed on the command line (null, true, 0.5, abc)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def checked_pack_size(pack_size: int | str) -> int | str:
    """``hydra.launcher.pack_size`` as given, if it is auto or a whole number of at least 1."""
    if pack_size != "auto" and not (isinstance(pack_size, int) and not isinstance(pack_size, bool) and pack_size >= 1):
        raise ValueError(
            f"hydra.launcher.pack_size={as_typed(pack_size)} must be auto or a whole number of at least 1."
        )
    return pack_size


class PackedLauncher(Launcher):
    """Args:
    pack_size: "auto" (on the CPU, up to 16, 2 or 1 jobs a pack by the operations of a job's
        step, untimed; on a GPU, a short timing probe per group of jobs that can share a pack
        picks the size that trains the most jobs per second, one job alone included:
        ``mnist_lab.packed.size_probe``), or the most jobs per pack (1: no packing).
    gpus: the GPUs to spread the units over, one worker process each: "auto" (every visible
        GPU; with one or none, the units run in this process) or a number (the first N).
    """

    def __init__(self, pack_size: int | str = "auto", gpus: int | str = "auto") -> None:
        super().__init__()
        self.pack_size = checked_pack_size(pack_size)
        if gpus != "auto" and not (isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 0):
            raise ValueError(
                f"hydra.launcher.gpus={as_typed(gpus)} must be auto or a whole number of at least 0 "
                "(0 or 1: the units run in this process)."
            )
        self.gpus = gpus
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from mnist_lab.packed.launch import PackedLaunch

        launch = PackedLaunch(self.pack_size, self.hydra_context, self.task_function, self.config, self.gpus)
        return launch.launch(job_overrides, initial_job_idx)
