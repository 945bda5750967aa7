"""A sweep's job configs composed once per choice of config groups (mnist_lab/cli/sweep_configs.py)
are exactly Hydra's: for every shipped study (conf/experiment/*.yaml, by glob) and for each kind
of override, the same config (unresolved and resolved, with its flags), the same .hydra/ files and
the same job folder name as ``ConfigLoaderImpl.load_sweep_config`` gives, job by job."""

from __future__ import annotations

import copy

import pytest
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from mnist_lab import CONF_DIR
from mnist_lab.analysis.sweep import job_dirname  # noqa: F401  (registers ${job_dirname:...})
from mnist_lab.cli.sweep_configs import ComposedOnce
from mnist_lab.records.run_dir import HYDRA_SUBDIR, write_hydra_files

STUDIES = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
SWEEP = ["hydra.sweep.dir=/tmp/sweep_configs_test"]
KINDS = {
    "group choices": ["model=linear,mlp", "optimizer=sgd", "scheduler=step,none"],
    "add, force-add, delete": [
        "+trainer.gradient_clip_val=0.5",
        "++seed=7",
        "++model.dropout=0.1",
        "~callbacks.images",
        "data.batch_size=32,64",
    ],
    "delete a group, choose one, add one at a package": [
        "~callbacks",
        "logger=csv",
        "+optimizer@second=sgd",
        "seed=1,2",
    ],
    "interpolations": ["data.split_seed=${seed}", "optimizer.lr=0.001,0.01", "seed=1,2"],
    "lists": ["model.hidden=[64,32],[128],[]", "optimizer=adam", "optimizer.betas=[0.8,0.9]"],
    "range of seeds": ["seed=range(5)"],
    "hydra keys": [
        "hydra/launcher=basic",
        "hydra.verbose=true",
        "hydra.job.config.override_dirname.item_sep=+",
        "seed=3,4",
    ],
    "hydra keys Hydra composes itself": ["hydra.job.env_copy=[HOME]", "seed=1,2"],
    "study with a grid and overrides": ["experiment=mlp_lr", "trainer.max_epochs=2", "seed=range(2)"],
    "choice sweep of groups and values": ["loss=choice(ce,mse)", "data.batch_size=choice(16,64)"],
}


@pytest.fixture(scope="module")
def loader():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def sweep_jobs(loader, arguments: list[str], most: int = 6) -> tuple:
    """The master config Hydra composes for ``-m <arguments>``, and the jobs' overrides as the
    basic sweeper expands them (its grid params first): the first ``most`` - 1 and the last."""
    master = loader.load_configuration("train", [*SWEEP, *arguments], RunMode.MULTIRUN)
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(
        [*params, *OmegaConf.to_container(master.hydra.overrides.task)]
    )
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    return master, jobs[: most - 1] + jobs[most - 1 :][-1:]


def as_launched(cfg, num: int):
    """The job's config as a launcher and Hydra's ``run_job`` set it up (its number and
    folder), and its task config."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.hydra.job.id = cfg.hydra.job.num = num
        cfg.hydra.runtime.output_dir = f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return cfg, task


def hydra_files(cfg, task, run_dir) -> dict[str, str]:
    HydraConfig.instance().set_config(copy.deepcopy(cfg))
    write_hydra_files(run_dir, task)
    return {p.name: p.read_text() for p in sorted((run_dir / HYDRA_SUBDIR).iterdir())}


def assert_composed_alike(loader, arguments: list[str], tmp_path) -> int:
    master, jobs = sweep_jobs(loader, arguments)
    once = ComposedOnce(loader)
    for num, overrides in enumerate(jobs):
        theirs, their_task = as_launched(loader.load_sweep_config(master, list(overrides)), num)
        ours, our_task = as_launched(once.load_sweep_config(master, list(overrides)), num)
        job = f"job {num} {overrides}"
        assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(theirs), job
        assert OmegaConf.to_container(ours, resolve=True) == OmegaConf.to_container(theirs, resolve=True), job
        assert OmegaConf.to_container(our_task, resolve=True) == OmegaConf.to_container(their_task, resolve=True)
        for node in ("", "hydra", "model", "hydra.job"):
            for flag in ("struct", "readonly"):
                assert OmegaConf.select(ours, node)._get_flag(flag) == OmegaConf.select(theirs, node)._get_flag(flag)
        assert str(ours.hydra.sweep.subdir) == str(theirs.hydra.sweep.subdir), job  # the job's folder
        assert hydra_files(ours, our_task, tmp_path / f"ours{num}") == hydra_files(
            theirs, their_task, tmp_path / f"theirs{num}"
        ), job
    return len(jobs)


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_composes_as_hydra_composes_it(loader, study, tmp_path):
    assert assert_composed_alike(loader, [f"experiment={study}", "seed=range(2)"], tmp_path) >= 2


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_override_composes_as_hydra_composes_it(loader, kind, tmp_path):
    assert assert_composed_alike(loader, KINDS[kind], tmp_path) >= 2


def test_a_study_is_composed_once_for_all_its_seeds(loader):
    master, jobs = sweep_jobs(loader, ["model=linear", "seed=range(16)"], most=16)
    once = ComposedOnce(loader)
    for overrides in jobs:
        once.load_sweep_config(master, list(overrides))
    assert len(jobs) == 16 and len(once.composed) == 1


def test_a_bad_override_is_refused_with_hydras_own_error(loader):
    master, jobs = sweep_jobs(loader, ["model=linear", "seed=1,2"])
    job = [*jobs[0], "model.no_such_key=1"]
    with pytest.raises(ConfigCompositionException) as theirs:
        loader.load_sweep_config(master, job)
    with pytest.raises(ConfigCompositionException) as ours:
        ComposedOnce(loader).load_sweep_config(master, job)
    assert str(ours.value) == str(theirs.value) and str(ours.value.__cause__) == str(theirs.value.__cause__)
