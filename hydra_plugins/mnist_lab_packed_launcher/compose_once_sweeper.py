"""``hydra/sweeper=compose_once`` (conf/hydra/sweeper/compose_once.yaml, the default of every
--multirun): Hydra's BasicSweeper, handing itself and its launcher a config loader that composes
each choice of config groups once (``mnist_lab.cli.sweep_configs.ComposedOnce``); the configs its
check composes are the ones its launcher runs. Before it writes ``multirun.yaml`` it holds the sweep
dir's lock (``mnist_lab.cli.sweep_lock``: one sweep at a time) and checks the dir
(``mnist_lab.records.sweep_dir``: a resume runs the sweep the dir holds, its jobs numbered as their
folders).
Hydra imports every module of hydra_plugins when any Hydra app starts, so this one imports
mnist_lab only when a sweep is set up."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ComposeOnceSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from mnist_lab.cli.sweep_configs import ComposedOnce

        loader = ComposedOnce(hydra_context.config_loader)
        hydra_context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def split_arguments(self, overrides, max_batch_size: int | None) -> list[list[list[str]]]:
        """BasicSweeper's batches of jobs, checked against the sweep dir and numbered as its job
        folders, with the dir's lock held. BasicSweeper.sweep calls this once it has parsed the
        command and before it writes ``multirun.yaml``: the one place in between, which is why this
        overrides a static method of Hydra's rather than copying its ``sweep``."""
        from mnist_lab.cli import sweep_lock
        from mnist_lab.cli.config_error import ConfigError
        from mnist_lab.records import sweep_dir

        batches = BasicSweeper.split_arguments(overrides, max_batch_size)
        directory = Path(str(self.config.hydra.sweep.dir))
        resume = self.config.get("ckpt_path") == "last"
        try:
            listed = [job for batch in batches for job in batch]
            loader = self.hydra_context.config_loader
            # the dir checked with its lock held: no other sweep changes it in between
            jobs = sweep_lock.hold(directory, lambda: sweep_dir.jobs_for(directory, listed, resume, loader))
        except ConfigError as error:  # nothing written: one sentence, as the launcher says a refused job
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        sizes = [len(batch) for batch in batches]
        return [jobs[sum(sizes[:n]) : sum(sizes[: n + 1])] for n in range(len(sizes))]

    def sweep(self, arguments: list[str]):
        from mnist_lab.cli import sweep_lock

        try:
            return super().sweep(arguments)
        except BaseException:  # a sweep that ends here has no report to write (SweepReport releases it then)
            sweep_lock.release()
            raise

    def validate_batch_is_legal(self, batch) -> None:
        """As BasicSweeper's (every job's config composes), each config kept for the launcher."""
        for overrides in batch:
            self.hydra_context.config_loader.keep(self.config, list(overrides))
