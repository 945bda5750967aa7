"""``hydra/launcher=ray_cluster`` and ``ray_gpus`` (conf/hydra/launcher/): hydra-ray-launcher's
launcher, each unit of a packed sweep (a pack, or a job alone) one Ray task instead of each job.
``launch`` plans the units as ``hydra/launcher=packed`` does (``mnist_lab.packed.launch``) and
starts Ray and its tasks as the plugin's ``_core.launch`` does; ``ray.init`` and ``ray.remote``
are the plugin's keys, and ``pack_size`` is ``packed.yaml``'s. Registered as ``packed_ray`` (the
plugin's structured config with ``pack_size``) when the plugin is installed (the ``launchers``
extra)."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.mnist_lab_packed_launcher.packed_launcher import checked_pack_size

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_ray_launcher._config import RayLauncherConf
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
except ImportError:  # hydra-ray-launcher is not installed: no Ray presets
    RayLauncher = None

if RayLauncher is not None:

    class PackedRayLauncher(RayLauncher):
        def __init__(self, ray: DictConfig, pack_size: int | str = "auto") -> None:
            self.pack_size = checked_pack_size(pack_size)
            super().__init__(ray)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            import ray
            from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

            from mnist_lab.packed.launch import PackedLaunch
            from mnist_lab.packed.units import describe, run_unit_remote

            launch = PackedLaunch(self.pack_size, self.hydra_context, self.task_function, self.config)
            units = launch.plan(job_overrides, initial_job_idx)
            # as the plugin: its small object store by default (ray_cluster.yaml leaves it to the cluster)
            self.ray_cfg.init.setdefault("object_store_memory", 78643200)
            start_ray(self.ray_cfg.init)
            remote = OmegaConf.to_container(self.ray_cfg.remote, resolve=True)
            run_unit = ray.remote(**remote)(run_unit_remote) if remote else ray.remote(run_unit_remote)
            log.info(describe(units, f"as {len(units)} Ray tasks"))
            tasks = [run_unit.remote(launch, unit, Singleton.get_state()) for unit in units]
            return launch.gather(units, ray.get(tasks))

    @dataclass
    class PackedRayLauncherConf(RayLauncherConf):
        _target_: str = "hydra_plugins.mnist_lab_packed_launcher.packed_ray.PackedRayLauncher"
        pack_size: Any = "auto"

    ConfigStore.instance().store(
        group="hydra/launcher", name="packed_ray", node=PackedRayLauncherConf, provider="mnist_lab"
    )
