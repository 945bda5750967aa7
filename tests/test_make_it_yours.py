"""README's *Make it yours*, followed as written: each recipe's files go into a copy of the clone,
and its commands run there (with the tests' small data, one short epoch and their own output
folders added), as a user who cloned the template would run them."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_lab.data import mnist_arrays
from tests.conftest import QUICK, ROOT, read_metrics, run_cli
from tests.packed.test_packed_launcher import assert_same_record
from tests.test_evaluate_predict import predictions

pytestmark = pytest.mark.slow

SHORT = [*QUICK, "trainer.max_epochs=1"]
BUILDABLE = "buildable=[mnist_lab.models,mnist_lab.losses,torch.nn,my_models]"


def recipe(number: int) -> tuple[dict[str, str], list[tuple[str, list[str]]]]:
    """Recipe ``number`` of README's *Make it yours*: its files ({the path its first line names:
    the rest}) and its commands ((module, arguments) of each ``python -m`` line)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Make it yours\n", 1)[1].split("\n## ", 1)[0]
    part = next(p for p in re.split(r"^### ", section, flags=re.M) if p.startswith(f"{number}. "))
    files = {}
    for block in re.findall(r"^```\w*\n(.*?)^```", part, flags=re.M | re.S):
        header, _, body = block.partition("\n")
        files[header.removeprefix("# ")] = body
    commands = [shlex.split(line)[2:] for line in re.findall(r"^    (python -m .*)$", part, flags=re.M)]
    return files, [(command[0], command[1:]) for command in commands]


def clone(tmp_path: Path, files: dict[str, str]) -> Path:
    """A copy of the clone (package, configs, tests, plugins) with the recipe's files written in."""
    root = tmp_path / "clone"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mnist_lab", "conf", "tests", "hydra_plugins"):
        shutil.copytree(ROOT / name, root / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", root)
    for name, body in files.items():
        path, _, where = name.partition(", in class ")
        if where:  # lines to add to a class: after the class's last line
            source = (root / path).read_text()
            start = source.index(f"\nclass {where}(")
            end = source.find("\n\n\nclass ", start + 1)
            end = len(source) if end < 0 else end
            (root / path).write_text(source[:end].rstrip("\n") + "\n\n" + body + source[end:])
        else:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(body)
    return root


def run(root: Path, data_dir: Path, command: tuple[str, list[str]], *extra: str, check: bool = True):
    module, args = command
    result = run_cli(module, *args, *extra, cwd=root, data_dir=data_dir, check=check)
    return result, result.stdout + result.stderr


def test_a_model_in_your_own_module(tmp_path, synthetic_data_dir):
    files, (train, sweep, evaluate, predict) = recipe(1)
    root = clone(tmp_path, files)
    small = "model.channels=4"  # the recipe's ResNet, narrower: a short test
    run(root, synthetic_data_dir, train, *SHORT, small, f"hydra.run.dir={root / 'run'}")
    metrics = read_metrics(root / "run")
    assert metrics["status"] == "ok"

    _, output = run(root, synthetic_data_dir, sweep, *SHORT, small, f"hydra.sweep.dir={root / 'sweep'}")
    reason = "model has no packed form (my_models.ResNet: ResNet is not an nn.Sequential)"
    assert f"Launching 2 jobs locally: 0 in 0 packs, 2 alone: {reason}" in output
    assert "sweep: 2 jobs, 2 ok" in output

    def on_the_run(command):
        module, args = command
        return module, [a.replace("outputs/<date>/<time>", str(root / "run")) for a in args]

    assert BUILDABLE in evaluate[1] and BUILDABLE in predict[1]
    _, output = run(root, synthetic_data_dir, on_the_run(evaluate))
    assert f"test/acc {metrics['test_acc']:.4f}" in output
    arrays = mnist_arrays.load_arrays(synthetic_data_dir)
    (root / "digits").mkdir()
    for i in range(3):
        Image.fromarray(np.asarray(arrays["test_images"][i])).save(root / "digits" / f"digit_{i}.png")
    result, _ = run(root, synthetic_data_dir, on_the_run(predict))
    assert sorted(predictions(result.stdout)) == [f"digits/digit_{i}.png" for i in range(3)]


def test_an_mlp_with_a_forward_you_changed_sweeps_as_the_basic_launcher(tmp_path, synthetic_data_dir):
    """Fails on e2720c3, where the pack trained the unedited MLP while a solo run trained the edit."""
    files, (sweep,) = recipe(2)
    root = clone(tmp_path, files)
    _, output = run(root, synthetic_data_dir, sweep, *SHORT, f"hydra.sweep.dir={root / 'packed'}")
    assert "2 alone: model has no packed form (mnist_lab.models.MLP: MLP defines forward)" in output
    run(root, synthetic_data_dir, sweep, *SHORT, "hydra/launcher=basic", f"hydra.sweep.dir={root / 'basic'}")
    jobs = sorted(p.name for p in (root / "basic").iterdir() if (p / "metrics.json").exists())
    assert len(jobs) == 2
    for job in jobs:
        assert_same_record(read_metrics(root / "packed" / job), read_metrics(root / "basic" / job), job)


def test_an_optimizer_torch_ships_that_we_do_not_list(tmp_path, synthetic_data_dir):
    files, (train, sweep, graph) = recipe(3)
    root = clone(tmp_path, files)
    run(root, synthetic_data_dir, train, *SHORT, f"hydra.run.dir={root / 'run'}")
    assert read_metrics(root / "run")["status"] == "ok"
    _, output = run(root, synthetic_data_dir, sweep, *SHORT, f"hydra.sweep.dir={root / 'sweep'}")
    assert "Launching 2 jobs locally: 0 in 0 packs, 2 alone: NAdam has no packed update" in output
    assert "sweep: 2 jobs, 2 ok" in output
    result, output = run(root, synthetic_data_dir, graph, *SHORT, f"hydra.run.dir={root / 'graph'}", check=False)
    assert result.returncode == 1
    assert "error: step.cuda_graph=on but NAdam cannot run inside a CUDA graph; use step.cuda_graph=auto." in output


def test_a_study_of_your_own_runs_and_the_tests_take_it_without_an_edit(tmp_path, synthetic_data_dir):
    files, (sweep,) = recipe(4)
    root = clone(tmp_path, files)
    _, output = run(root, synthetic_data_dir, sweep, *SHORT, f"hydra.sweep.dir={root / 'sweep'}")
    assert "sweep: 2 jobs, 2 ok" in output
    tests = ["tests/test_experiments.py", "tests/test_study_configs.py", "-k", "my_study or shipped"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *tests],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "test_the_study_trains[my_study]" in result.stdout
    assert "test_every_job_of_the_study_builds_its_net_loss_and_optimizer[my_study]" in result.stdout
