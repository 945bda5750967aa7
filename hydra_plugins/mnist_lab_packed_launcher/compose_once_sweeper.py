"""``hydra/sweeper=compose_once`` (conf/hydra/sweeper/compose_once.yaml, the default of every
--multirun): Hydra's BasicSweeper, handing itself and its launcher a config loader that composes
each choice of config groups once (``mnist_lab.cli.sweep_configs.ComposedOnce``); the configs its
check composes are the ones its launcher runs. Hydra imports every
module of hydra_plugins when any Hydra app starts, so this one imports mnist_lab only when a sweep
is set up."""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ComposeOnceSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from mnist_lab.cli.sweep_configs import ComposedOnce

        loader = ComposedOnce(hydra_context.config_loader)
        hydra_context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch) -> None:
        """As BasicSweeper's (every job's config composes), each config kept for the launcher."""
        for overrides in batch:
            self.hydra_context.config_loader.keep(self.config, list(overrides))
