"""``hydra/launcher=slurm`` and ``slurm_local`` (conf/hydra/launcher/): hydra-submitit-launcher's
launchers, each unit of a packed sweep (a pack, or a job alone) one submitit job instead of each
job. ``launch`` plans the units as ``hydra/launcher=packed`` does (``mnist_lab.packed.launch``)
and submits them as the plugin submits jobs; every key of the plugin's config works, and
``pack_size`` is ``packed.yaml``'s. Registered as ``packed_submitit_slurm`` and
``packed_submitit_local`` (the plugin's structured configs with ``pack_size``) when the plugin is
installed (the ``launchers`` extra)."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf, open_dict, read_write

from hydra_plugins.mnist_lab_packed_launcher.packed_launcher import checked_pack_size

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
except ImportError:  # hydra-submitit-launcher is not installed: no submitit presets
    BaseSubmititLauncher = None

if BaseSubmititLauncher is not None:

    class PackedSubmititLauncher(BaseSubmititLauncher):
        def __init__(self, pack_size: int | str = "auto", **params: Any) -> None:
            self.pack_size = checked_pack_size(pack_size)
            super().__init__(**params)

        def __call__(self, unit, singleton_state: dict) -> dict[int, JobReturn]:
            """One unit, in its submitit job (as the plugin's ``__call__`` runs one job: its
            ``hydra.job.id`` is the submitit job's)."""
            import submitit

            from mnist_lab.packed.launch import PackedLaunch
            from mnist_lab.packed.units import run_unit_remote

            Singleton.set_state(singleton_state)
            for config in unit.configs:  # (read-only once Hydra's run_job ran them: a requeued unit's)
                with read_write(config.hydra.job), open_dict(config.hydra.job):
                    config.hydra.job.id = submitit.JobEnvironment().job_id
            launch = PackedLaunch(self.pack_size, self.hydra_context, self.task_function, self.config)
            return run_unit_remote(launch, unit, singleton_state)

        def checkpoint(self, unit, singleton_state: dict):
            """What submitit runs when SLURM requeues the unit (preempted, or timed out with
            ``max_num_timeout`` left): its jobs resumed, each alone from its last.ckpt."""
            import submitit

            return submitit.helpers.DelayedSubmission(self, unit.resumed(), singleton_state)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from mnist_lab.packed.launch import PackedLaunch
            from mnist_lab.packed.units import describe

            launch = PackedLaunch(self.pack_size, self.hydra_context, self.task_function, self.config)
            units = launch.plan(job_overrides, initial_job_idx)
            executor = self._executor()
            log.info(describe(units, f"as {len(units)} submitit jobs"))
            jobs = executor.map_array(self, units, [Singleton.get_state()] * len(units))
            return launch.gather(units, [job.results()[0] for job in jobs])

        def _executor(self):
            """The plugin's executor with the plugin's settings, as its own ``launch`` builds it."""
            import submitit

            specific_init_keys = {"max_num_timeout"}
            init_params = {"folder": self.params["submitit_folder"]}
            init_params.update({f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in specific_init_keys})
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
            baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
            init_keys = specific_init_keys | {"submitit_folder"}
            executor.update_parameters(
                **{
                    k if k in baseparams else f"{self._EXECUTOR}_{k}": v
                    for k, v in self.params.items()
                    if k not in init_keys
                }
            )
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            if "mode" in self.config.hydra.sweep:
                sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
            return executor

    class PackedLocalLauncher(PackedSubmititLauncher):
        _EXECUTOR = "local"

    class PackedSlurmLauncher(PackedSubmititLauncher):
        _EXECUTOR = "slurm"

    @dataclass
    class PackedLocalQueueConf(LocalQueueConf):
        _target_: str = "hydra_plugins.mnist_lab_packed_launcher.packed_submitit.PackedLocalLauncher"
        pack_size: Any = "auto"

    @dataclass
    class PackedSlurmQueueConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.mnist_lab_packed_launcher.packed_submitit.PackedSlurmLauncher"
        pack_size: Any = "auto"

    ConfigStore.instance().store(
        group="hydra/launcher", name="packed_submitit_local", node=PackedLocalQueueConf, provider="mnist_lab"
    )
    ConfigStore.instance().store(
        group="hydra/launcher", name="packed_submitit_slurm", node=PackedSlurmQueueConf, provider="mnist_lab"
    )
