"""`evaluate` and `predict`, run as the README shows, on CNN and MLP checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_lab.data import mnist_arrays
from mnist_lab.predict import ImageError, image_paths, load_images, mnist_like
from mnist_lab.records.checkpoint_loading import CheckpointError, load_checkpoint
from tests.conftest import QUICK, REAL_DATA, read_metrics, run_cli

MODELS = {"cnn": ["model=cnn_small", "model.fc=[64]"], "mlp": ["model=mlp"]}


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained_run(request, tmp_path_factory, synthetic_data_dir):
    """A finished run dir on the synthetic data, one per model type."""
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    run_cli(
        "mnist_lab.train",
        *QUICK,
        *MODELS[request.param],
        f"hydra.run.dir={run_dir}",
        cwd=run_dir.parent,
        data_dir=synthetic_data_dir,
    )
    return run_dir


@pytest.fixture(scope="module")
def real_test_set():
    if not (REAL_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST is not in {REAL_DATA}; run `make data` first")
    arrays = mnist_arrays.load_arrays(REAL_DATA)
    return arrays["test_images"].numpy(), arrays["test_labels"].numpy()


def render_like_a_user(digit: np.ndarray, i: int) -> Image.Image:
    """An MNIST digit re-drawn as someone's own image: other size, off-centre, and (for even
    ``i``) dark ink on white paper; every third one saved as RGB."""
    scale = (3, 5, 8, 2, 4, 6, 10, 3, 7, 5)[i % 10]
    big = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (28 * scale + 40 * i + 13, 28 * scale + 17 * i + 31), 0)
    canvas.paste(big, (7 * i + 3, 20))
    if i % 2 == 0:
        canvas = Image.eval(canvas, lambda v: 255 - v)
    return canvas.convert("RGB") if i % 3 == 0 else canvas


def write_digits(directory, images, labels, count=10) -> dict[str, int]:
    directory.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(count):
        path = directory / f"digit_{i}.png"
        render_like_a_user(images[i], i).save(path)
        truth[str(path.relative_to(directory.parent))] = int(labels[i])
    return truth


def predictions(stdout: str) -> dict[str, list[tuple[int, float]]]:
    """{file: [(digit, probability), ...] best first} from predict's output lines."""
    found = {}
    for line in stdout.splitlines():
        if match := re.match(r"^(\S+)\s+(\d)\s+\((.*)\)$", line):
            ranked = re.findall(r"(\d):\s+([\d.]+)%", match[3])
            found[match[1]] = [(int(d), float(p) / 100) for d, p in ranked]
            assert found[match[1]][0][0] == int(match[2])
    return found


def test_evaluate_reproduces_the_runs_test_metrics(trained_run, synthetic_data_dir):
    result = run_cli("mnist_lab.evaluate", f"ckpt_path={trained_run}", cwd=trained_run, data_dir=synthetic_data_dir)
    metrics = read_metrics(trained_run)
    assert f"test/acc {metrics['test_acc']:.4f}" in result.stdout, result.stdout
    assert f"test/loss {metrics['test_loss']:.4f}" in result.stdout, result.stdout
    rows = [line for line in result.stdout.splitlines() if re.match(r"^│ \d ", line)]
    assert len(rows) == 10, result.stdout  # the per-class table
    png = trained_run / "checkpoints" / "best.confusion_matrix.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and min(image.size) > 300


def test_evaluate_takes_a_ckpt_file(trained_run, synthetic_data_dir):
    last = trained_run / "checkpoints" / "last.ckpt"
    result = run_cli("mnist_lab.evaluate", f"ckpt_path={last}", cwd=trained_run, data_dir=synthetic_data_dir)
    accuracy = re.search(r"test/acc ([01]\.\d{4})", result.stdout)
    assert accuracy and float(accuracy[1]) > 0.8, result.stdout
    assert (last.parent / "last.confusion_matrix.png").is_file()


def test_evaluate_explains_a_path_that_is_not_a_checkpoint(trained_run):
    if "mlp" in str(trained_run):
        pytest.skip("the checks do not depend on the model; run them once")
    for name, expected in [
        ("metrics.json", "is not a PyTorch checkpoint"),
        ("missing.ckpt", "does not exist"),
        ("tensorboard", "is a directory with no checkpoints/best.ckpt"),
    ]:
        with pytest.raises(CheckpointError, match=expected):
            load_checkpoint(trained_run / name, torch.device("cpu"))
    path = trained_run / "metrics.json"
    result = run_cli("mnist_lab.evaluate", f"ckpt_path={path}", cwd=trained_run, check=False)
    message = result.stderr.strip()
    assert result.returncode == 1 and message.startswith(f"error: {path} is not a PyTorch"), message
    assert len(message.splitlines()) == 1 and "pass a run dir" in message


def test_predict_prints_each_files_digit_and_probabilities(trained_run, tmp_path):
    digits = tmp_path / "digits"
    digits.mkdir()
    for i, (paper, ink) in enumerate([("white", "black"), ("black", "white"), (200, 30)]):
        image = Image.new("L", (60 + 30 * i, 90), paper)
        image.paste(ink, (25, 15, 35 + 10 * i, 75))  # a bar: a "1" of some width
        image.save(digits / f"bar_{i}.png")
    result = run_cli("mnist_lab.predict", f"ckpt_path={trained_run}", "images=digits/*.png", cwd=tmp_path)
    found = predictions(result.stdout)
    assert sorted(found) == [f"digits/bar_{i}.png" for i in range(3)], result.stdout
    for ranked in found.values():
        assert len(ranked) == 3 and 0 < sum(p for _, p in ranked) <= 1.001
        assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)


def test_predict_explains_bad_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    with pytest.raises(ImageError, match="matches no files"):
        image_paths("nothing/*.png")
    with pytest.raises(ImageError, match="notes.png is not an image Pillow can read"):
        load_images([Path("notes.png")])
    with pytest.raises(ImageError, match="blank.png looks blank"):
        load_images([Path("blank.png")])
    result = run_cli("mnist_lab.predict", "ckpt_path=nowhere", "images=blank.png", cwd=tmp_path, check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: blank.png looks blank")
    assert len(result.stderr.strip().splitlines()) == 1


def test_preprocessing_recovers_mnist_digits_drawn_at_other_sizes_and_polarity(real_test_set):
    images, _ = real_test_set
    for i in range(20):
        original = images[i].astype(np.float32) / 255
        recovered = mnist_like(render_like_a_user(images[i], i))
        cosine = (original * recovered).sum() / np.linalg.norm(original) / np.linalg.norm(recovered)
        assert cosine > 0.85, (i, cosine)


@pytest.mark.slow
@pytest.mark.real_mnist
def test_predict_reads_re_rendered_test_digits_with_a_trained_cnn(tmp_path, real_test_set):
    # 200 steps of Adam on real MNIST: about 95% test accuracy (10 of 10 here, when written)
    run_dir = tmp_path / "run"
    run_cli(
        "mnist_lab.train",
        *MODELS["cnn"],
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.limit_train_batches=200",
        "data.val_size=1000",
        f"data.data_dir={REAL_DATA}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    truth = write_digits(tmp_path / "digits", *real_test_set)
    result = run_cli("mnist_lab.predict", f"ckpt_path={run_dir}", "images=digits/*.png", cwd=tmp_path)
    found = predictions(result.stdout)
    assert sorted(found) == sorted(truth), result.stdout
    right = sum(found[path][0][0] == label for path, label in truth.items())
    assert right >= 9, result.stdout


def test_a_checkpoint_naming_other_code_to_build_is_refused(trained_run, tmp_path, synthetic_data_dir):
    """weights_only keeps unpickling safe; the run config's _target_ must not run code either."""
    if "mlp" in str(trained_run):
        pytest.skip("the checks do not depend on the model; run them once")
    checkpoint = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    marker = tmp_path / "ran"
    checkpoint["hyper_parameters"]["config"]["model"] = {"_target_": "os.mkdir", "path": str(marker)}
    forged = tmp_path / "forged.ckpt"
    torch.save(checkpoint, forged)
    with pytest.raises(CheckpointError, match="asks to build 'os.mkdir' as its model"):
        load_checkpoint(forged, torch.device("cpu"))
    result = run_cli(
        "mnist_lab.evaluate", f"ckpt_path={forged}", cwd=tmp_path, data_dir=synthetic_data_dir, check=False
    )
    assert result.returncode == 1 and not marker.exists()
    assert result.stderr.strip().splitlines() == [
        f"error: {forged} asks to build 'os.mkdir' as its model, which is in no module that buildable lists "
        "(mnist_lab.models, mnist_lab.losses, torch.nn), and is not run; pass a run dir (outputs/<date>/<time>) "
        "or a .ckpt file written by mnist_lab.train, or, if you trust that code, add its module: "
        "'buildable=[mnist_lab.models,mnist_lab.losses,torch.nn,os]'."
    ]


@pytest.mark.parametrize(
    "target",
    ["torch.nn.modules.module.torch.os.mkdir", "mnist_lab.losses.torch.os.mkdir"],
)
def test_a_target_reaching_other_code_through_an_allowed_module_is_refused(trained_run, tmp_path, target):
    """Hydra follows attributes, so a text that starts with an allowed module can still reach
    ``os.mkdir``: what is built must be defined in an allowed module, not only named through one."""
    if "mlp" in str(trained_run):
        pytest.skip("the checks do not depend on the model; run them once")
    import os

    from hydra._internal.utils import _locate

    assert _locate(target) is os.mkdir  # the hole: the text passes a prefix check
    checkpoint = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    marker = tmp_path / "ran"
    checkpoint["hyper_parameters"]["config"]["loss"] = {"_target_": target, "path": str(marker)}
    forged = tmp_path / "forged.ckpt"
    torch.save(checkpoint, forged)
    with pytest.raises(CheckpointError, match=f"asks to build '{target}' as its loss, which is in no module"):
        load_checkpoint(forged, torch.device("cpu"))
    assert not marker.exists()


TRUSTED = """
from pathlib import Path

from torch import nn

Path("imported").touch()  # what importing this module does: the test sees whether it ran


class Tiny(nn.Sequential):
    def __init__(self, hidden: int = 16):
        super().__init__(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
"""


def test_buildable_lets_a_user_trust_their_own_module_and_nothing_else(tmp_path, synthetic_data_dir):
    """A run of a model of the user's own module: evaluate refuses it unbuilt (the module is not
    even imported) until ``buildable`` lists that module; a forged target is refused either way."""
    (tmp_path / "trusted_nets.py").write_text(TRUSTED)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tiny.yaml").write_text("_target_: trusted_nets.Tiny\nhidden: 16\n")
    run_dir = tmp_path / "run"
    run_cli(
        "mnist_lab.train",
        *QUICK,
        "trainer.max_epochs=1",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "model=tiny",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    (tmp_path / "imported").unlink()
    refused = run_cli(
        "mnist_lab.evaluate", f"ckpt_path={run_dir}", cwd=tmp_path, data_dir=synthetic_data_dir, check=False
    )
    assert refused.returncode == 1 and not (tmp_path / "imported").exists()
    assert "'buildable=[mnist_lab.models,mnist_lab.losses,torch.nn,trusted_nets]'" in refused.stderr
    trust = "buildable=[mnist_lab.models,mnist_lab.losses,torch.nn,trusted_nets]"
    result = run_cli("mnist_lab.evaluate", f"ckpt_path={run_dir}", trust, cwd=tmp_path, data_dir=synthetic_data_dir)
    assert f"test/acc {read_metrics(run_dir)['test_acc']:.4f}" in result.stdout
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["loss"] = {"_target_": "os.mkdir", "path": str(tmp_path / "ran")}
    torch.save(checkpoint, tmp_path / "forged.ckpt")
    forged = run_cli("mnist_lab.evaluate", "ckpt_path=forged.ckpt", trust, cwd=tmp_path, check=False)
    assert forged.returncode == 1 and "asks to build 'os.mkdir' as its loss" in forged.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    "command, override, message",
    [
        (
            "evaluate",
            "batch_size=0",
            "error: batch_size=0 is not a whole number of images ≥ 1; use e.g. batch_size=10000.",
        ),
        ("evaluate", "device=tpu", "error: device=tpu is not a device here; use device=auto, cpu or cuda."),
        ("predict", "top=0", "error: top=0 is not how many digits to list; use a whole number from 1 to 10."),
        ("predict", "device=gpu", "error: device=gpu is not a device here; use device=auto, cpu or cuda."),
    ],
)
def test_evaluate_and_predict_settings_get_one_sentence(trained_run, tmp_path, command, override, message):
    if "mlp" in str(trained_run):
        pytest.skip("the checks do not depend on the model; run them once")
    Image.new("L", (50, 50), 0).save(tmp_path / "digit.png")
    images = ["images=digit.png"] if command == "predict" else []
    result = run_cli(f"mnist_lab.{command}", f"ckpt_path={trained_run}", *images, override, cwd=tmp_path, check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [message]
