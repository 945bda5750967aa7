"""A sweep's job configs composed once per choice of config groups, and each job's own values
applied on top, as Hydra applies them.

Hydra composes a job's config from scratch (``ConfigLoaderImpl.load_sweep_config``: the defaults
tree, every YAML file read and merged) and a sweep composes each job twice: the sweeper checks
that it composes, then the launcher composes it to run it. ``ComposedOnce`` is the sweep's
config loader (``hydra/sweeper=compose_once``, conf/hydra/sweeper/compose_once.yaml, hands it to
the sweeper and its launcher): it splits a job's overrides as Hydra does (an override whose key
names a config group picks a config, ``defaults_list.Overrides``; any other sets a value), asks
Hydra to compose the config-group choices once, and then, for each job, does what Hydra does
after composing (``ConfigLoaderImpl._load_configuration_impl``): applies the value overrides with
Hydra's own ``_apply_overrides_to_config``, lists the overrides under ``hydra.overrides``, copies
``hydra.job.env_copy``, and names the job (``hydra.job.override_dirname``, from Hydra's
``get_overrides_dirname``). ``tests/analysis/test_sweep_configs.py`` requires the very config Hydra
composes, for every shipped study and the kinds of override.

What could change what the groups compose to, or Hydra's own bookkeeping (``hydra.searchpath``,
``hydra.overrides``, ``hydra.runtime``, ``hydra.job.env_copy``), goes to Hydra's full composition.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mnist_lab.cli import sweep_clock

# value overrides of these keys change what Hydra computes while composing: Hydra composes those jobs
HYDRA_OWN = ("hydra.searchpath", "hydra.overrides", "hydra.runtime", "hydra.job.env_copy")


class ComposedOnce(ConfigLoader):
    """Hydra's config loader ``loader``, whose ``load_sweep_config`` composes each choice of
    config groups once (everything else is ``loader``'s)."""

    def __init__(self, loader: ConfigLoader):
        self.loader = loader
        self.composed: dict[tuple, DictConfig] = {}  # (config name, group overrides): Hydra's config
        self.searches: dict[str | None, bool] = {}  # config name: whether it sets hydra.searchpath
        self.kept: dict[tuple[str, ...], tuple[DictConfig, DictConfig]] = {}  # job's overrides: (master, config)

    def __getattr__(self, name: str) -> Any:  # anything else a caller uses of Hydra's loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __getstate__(self) -> dict:  # shipped to another process: the loader, not the configs
        return {"loader": self.loader, "composed": {}, "searches": {}, "kept": {}}

    def load_configuration(self, *args, **kwargs) -> DictConfig:
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self):
        return self.loader.get_search_path()

    def get_sources(self):
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args, **kwargs) -> list[str]:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args, **kwargs):
        return self.loader.compute_defaults_list(*args, **kwargs)

    def keep(self, master_config: DictConfig, sweep_overrides: list[str]) -> None:
        """Compose the job's config (the sweeper's check that it composes) and keep it for the
        launcher's ``load_sweep_config`` of the same job, which takes it: one composition a job."""
        cfg = self.load_sweep_config(master_config, sweep_overrides)
        self.kept[tuple(sweep_overrides)] = (master_config, cfg)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """The job's config, as ``ConfigLoaderImpl.load_sweep_config`` composes it."""
        master, kept = self.kept.pop(tuple(sweep_overrides), (None, None))
        if kept is not None and master is master_config:
            return kept
        with sweep_clock.timed("configs"):
            overrides = [*OmegaConf.to_container(master_config.hydra.overrides.hydra), *sweep_overrides]
            config_name = master_config.hydra.job.config_name
            parsed = OverridesParser.create().parse_overrides(overrides=overrides)
            groups = self._group_overrides(config_name, parsed)
            if groups is None:
                return self.loader.load_sweep_config(master_config, list(sweep_overrides))
            try:
                cfg = self._compose(config_name, parsed, groups)
            except OmegaConfBaseException as error:  # as Hydra's load_configuration says it
                raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from error
            OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
            return cfg

    def _group_overrides(self, config_name: str | None, parsed: list[Override]) -> list[bool] | None:
        """For each override, whether it picks a config (Hydra's test: its key names a config
        group and its value is not a dict); None where Hydra must compose the job itself."""
        if not isinstance(self.loader, ConfigLoaderImpl):
            return None
        if config_name not in self.searches:  # groups beyond the loader's search path: Hydra finds them
            primary = self.loader.repository.load_config(config_name) if config_name else None
            self.searches[config_name] = bool(primary and OmegaConf.select(primary.config, "hydra.searchpath"))
        if self.searches[config_name]:
            return None
        groups = []
        for override in parsed:
            key = override.key_or_group
            if override.is_sweep_override() or any(key == k or key.startswith(f"{k}.") for k in HYDRA_OWN):
                return None
            groups.append(self.loader.repository.group_exists(key) and not isinstance(override.value(), dict))
        return groups

    def _compose(self, config_name: str | None, parsed: list[Override], groups: list[bool]) -> DictConfig:
        picked = [o for o, group in zip(parsed, groups, strict=True) if group]
        picks = tuple(o.input_line for o in picked)
        if (config_name, picks) not in self.composed:
            composed = self.loader.load_configuration(
                config_name=config_name, overrides=list(picks), run_mode=RunMode.RUN
            )
            hydra_picks = sum(o.is_hydra_override() for o in picked)
            with open_dict(composed.hydra):  # as before Hydra listed the picks: each job lists its own
                for node, listed in [
                    (composed.hydra.overrides.hydra, hydra_picks),
                    (composed.hydra.overrides.task, len(picked) - hydra_picks),
                ]:
                    del node[len(node) - listed :]
            self.composed[(config_name, picks)] = composed
        cfg = copy.deepcopy(self.composed[(config_name, picks)])
        # from here on, what ConfigLoaderImpl._load_configuration_impl does after composing
        ConfigLoaderImpl._apply_overrides_to_config([o for o, g in zip(parsed, groups, strict=True) if not g], cfg)
        app_overrides = []
        for override in parsed:
            if override.is_hydra_override():
                cfg.hydra.overrides.hydra.append(override.input_line)
            else:
                cfg.hydra.overrides.task.append(override.input_line)
                app_overrides.append(override)
        with open_dict(cfg.hydra):
            for key in cfg.hydra.job.env_copy:
                cfg.hydra.job.env_set[key] = os.environ[key]
        cfg.hydra.runtime.cwd = os.getcwd()
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=app_overrides,
            kv_sep=cfg.hydra.job.config.override_dirname.kv_sep,
            item_sep=cfg.hydra.job.config.override_dirname.item_sep,
            exclude_keys=cfg.hydra.job.config.override_dirname.exclude_keys,
        )
        return cfg
