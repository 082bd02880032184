"""DeepSpeed ZeRO for real on 2 CPU processes (gloo): the same trajectory, evaluation and resume as DDP."""
import json
import math
import shutil
import subprocess
import time

import psutil
import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import ROOT, assert_within_drift, launch, launch_command, launch_env, step_losses

from largebatch.tools.cli import main
from largebatch.training.data import load_fashion_mnist
from largebatch.training.runfolder import RunFolder

pytestmark = pytest.mark.slow  # trains: see `pytest -m "not slow"` for the fast tier

RECIPE = ROOT / "recipes/fashion_mnist.py"
# 8 optimizer steps of B = 512 (64 per pass x 2 processes x 4 accumulation steps), warmup then cosine decay,
# the paper's weight-decay groups; checkpoints at steps 2, 4, 6, 8.
ARGS = ["--global-batch", 512, "--micro-batch", 64, "--epochs", 1, "--warmup-epochs", 0.5,
        "--schedule", "cosine", "--checkpoint-every", 2, "--keep-checkpoints", 4]
ZERO = {stage: f"zero{stage}.yaml" for stage in (1, 2, 3)}


def _run(data, run_dir, *extra, config="cpu_2proc.yaml", check=True):
    return launch(RECIPE, [*ARGS, "--data-dir", data, *extra, "--run-dir", run_dir], nproc=2, config=config,
                  check=check)


def _evals(run_dir):
    rows = [json.loads(line) for line in RunFolder(run_dir).metrics.read_text().splitlines()]
    return [r for r in rows if "test_error" in r]


def _error_line(out) -> str:
    """The run's own one-line error (torchrun adds its report of the failed worker after it)."""
    assert out.returncode != 0, out.stdout[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert lines, out.stderr[-3000:]
    assert "largebatch/" not in out.stderr  # no traceback through our code
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_fmnist):
    """The same 8 steps under DDP and ZeRO 1, 2 and 3, on the first 4096 training and 1000 test images.
    (Every engine x optimizer form x accumulation x BN mode, the rate at every step and resume mid-warmup:
    tests/test_matrix.py.)"""
    root = tmp_path_factory.mktemp("zero")
    # DDP in NCHW, as DeepSpeed runs (it turns channels-last off): stage 1 is compared with it bit for bit, and
    # with oneDNN's baseline kernels the two layouts sum in another order.
    out = {"ddp": (root / "ddp", _run(small_fmnist, root / "ddp", "--channels-last", "false"))}
    for stage, config in ZERO.items():
        out[stage] = (root / f"zero{stage}", _run(small_fmnist, root / f"zero{stage}", config=config))
    return out


@pytest.mark.numerics
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_trains_what_ddp_trains(runs, stage):
    (ddp, _), (run, proc) = runs["ddp"], runs[stage]
    assert f"| ZeRO stage {stage}" in proc.stdout  # the run header
    assert (sorted(RunFolder(run).checkpoints.glob("step_*"))[-1] / "pytorch_model").is_dir()  # DeepSpeed's format
    a, b = step_losses(ddp), step_losses(run)
    assert len(a) == len(b) == 8
    # Stage 1 all-reduces the accumulated gradient once, as DDP does: with 2 ranks the same bits. Stages 2 and
    # 3 reduce it in another order, which BN amplifies step by step: within the drift rule (conftest).
    if stage == 1:
        assert a == b
    assert_within_drift(b, a, 512)
    # Evaluation is the same function of the weights: rank 0's BN statistics in both modes.
    (ea,), (eb,) = _evals(ddp), _evals(run)
    assert abs(ea["test_error"] - eb["test_error"]) <= 0.005 and abs(ea["test_loss"] - eb["test_loss"]) < 1e-2, (ea, eb)


@pytest.mark.numerics
@pytest.mark.parametrize("stage", [2, 3])
def test_killed_zero_run_resumes_to_the_same_losses(runs, small_fmnist, tmp_path, stage):
    """SIGKILL once the step-4 checkpoint is on disk; at stage 3 a shard of it is also cut short, so the
    resume skips it for step 2's. Either way the resumed run ends with the uninterrupted run's losses."""
    run = tmp_path / "run"
    cmd = launch_command(RECIPE, [*ARGS, "--data-dir", small_fmnist, "--run-dir", run], nproc=2, config=ZERO[stage])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=launch_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (RunFolder(run).checkpoints / "step_00000004/progress.json").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    launcher = psutil.Process(proc.pid)
    for p in [launcher, *launcher.children(recursive=True)]:  # the launcher and its workers, all at once
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    for later in sorted(RunFolder(run).checkpoints.glob("step_*"))[2:]:  # as if killed right after step 4
        shutil.rmtree(later)
    if stage == 3:
        shard = sorted((RunFolder(run).checkpoints / "step_00000004/pytorch_model").glob("*optim_states.pt"))[0]
        shard.write_bytes(shard.read_bytes()[:1000])
    out = _run(small_fmnist, run, "--resume", config=ZERO[stage])
    assert "resuming from" in out.stdout
    assert ("step_00000002" if stage == 3 else "step_00000004") in out.stdout
    assert step_losses(run) == step_losses(runs[stage][0])


def test_divergence_under_zero_stops_where_ddp_stops(tmp_path, small_fmnist):
    """A rate far too high: both stop at the same step, with no checkpoint after it; DeepSpeed (fp32) has
    skipped the bad update itself, and the guard reads its global gradient norm."""
    bad = ["--base-lr", 1e6, "--warmup", "none", "--global-batch", 256, "--micro-batch", 64]
    lines = {}
    for mode, config in (("ddp", "cpu_2proc.yaml"), ("zero2", ZERO[2])):
        out = _run(small_fmnist, tmp_path / mode, *bad, config=config, check=False)
        lines[mode] = _error_line(out)
        assert "diverged" in lines[mode] and "the gradient is not finite" in lines[mode], lines[mode]
        assert json.loads((tmp_path / RunFolder(mode).summary).read_text())["status"] == "diverged"
    steps = {m: int(line.split("at step ")[1].split(",")[0]) for m, line in lines.items()}
    assert steps["ddp"] == steps["zero2"]
    kept = sorted((tmp_path / "zero2/checkpoints").glob("step_*"))
    assert all(int(k.name.split("_")[1]) <= steps["zero2"] for k in kept)


def test_checkpoints_do_not_cross_modes(runs, small_fmnist, tmp_path):
    for source, config, written in ((runs[2][0], "cpu_2proc.yaml", "DeepSpeed ZeRO stage 2"),
                                    (runs["ddp"][0], ZERO[2], "plain (DDP or one process)")):
        copy = tmp_path / source.name
        shutil.copytree(source, copy)
        line = _error_line(_run(small_fmnist, copy, "--resume", config=config, check=False))
        assert written in line and "this launch is" in line and "largebatch export" in line, line


def test_lars_is_refused_under_zero(tmp_path, small_fmnist):
    line = _error_line(_run(small_fmnist, tmp_path / "r", "--optimizer", "lars", config=ZERO[2], check=False))
    assert "--optimizer lars" in line and "ZeRO stage 2" in line, line


def test_compile_is_refused_under_zero(tmp_path, small_fmnist):
    line = _error_line(_run(small_fmnist, tmp_path / "r", "--compile", config=ZERO[2], check=False))
    assert "--compile" in line and "ZeRO stage 2" in line, line


@pytest.mark.parametrize("mode", ["ddp", 3])
def test_export_loads_into_timm_and_evaluates_as_the_run(runs, small_fmnist, tmp_path, capsys, mode):
    run = runs[mode][0]
    main(["export", str(run), str(tmp_path / "w.safetensors")])
    assert "wrote" in capsys.readouterr().out
    model = timm.create_model("resnet_fmnist", num_classes=10, in_chans=1)
    model.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=True)
    model.eval()
    data = load_fashion_mnist(str(small_fmnist))
    wrong, loss = 0, 0.0
    with torch.no_grad():
        for idx in torch.arange(data.num_test).split(500):
            x, y = data.test_batch(idx)
            out = model(x)
            wrong += (out.argmax(1) != y).sum().item()
            loss += torch.nn.functional.cross_entropy(out, y, reduction="sum").item()
    last = _evals(run)[-1]
    assert abs(wrong / data.num_test - last["test_error"]) <= 1 / data.num_test, (wrong, last)
    assert math.isclose(loss / data.num_test, last["test_loss"], abs_tol=1e-4), (loss, last)
