"""A run killed mid-way and resumed ends exactly where an uninterrupted run ends."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, final_params, launch

from largebatch.training.runfolder import RunFolder

pytestmark = pytest.mark.slow  # trains: see `pytest -m "not slow"` for the fast tier

RECIPE = ROOT / "recipes/fashion_mnist.py"


def _args(data, run_dir):
    return ["--data-dir", data, "--global-batch", 512, "--micro-batch", 128, "--subset", 3840, "--epochs", 3,
            "--warmup-epochs", 0.5,
            "--checkpoint-every", 2, "--keep-checkpoints", 3, "--run-dir", run_dir]


@pytest.mark.numerics
def test_kill_and_resume_gives_identical_parameters_and_metrics(tmp_path, small_fmnist):
    launch(RECIPE, _args(small_fmnist, tmp_path / "straight"))

    killed = tmp_path / "killed"
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.Popen([sys.executable, str(RECIPE)] + [str(a) for a in _args(small_fmnist, killed)], cwd=ROOT,
                            env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(RunFolder(killed).checkpoints.glob("step_00000004")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in RunFolder(killed).checkpoints.glob("step_*"))
    assert done and done[-1] < "step_00000024", f"the run finished before it could be killed: {done}"

    out = launch(RECIPE, _args(small_fmnist, killed) + ["--resume"])
    assert "resuming from" in out.stdout
    a, b = final_params(tmp_path / "straight"), final_params(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert RunFolder(killed).metrics.read_text() == RunFolder(tmp_path / "straight").metrics.read_text()
    assert len(list(RunFolder(killed).checkpoints.glob("step_*"))) == 3  # keep-checkpoints


def test_resume_refuses_checkpoint_of_another_config(tmp_path, small_fmnist):
    run = tmp_path / "run"
    first = launch(RECIPE, ["--global-batch", 256, "--subset", 512, "--epochs", 1, "--run-dir", run])
    assert "img/s" not in first.stderr and "epoch 1.00" in first.stdout  # TQDM_DISABLE=1 silences the bar only
    out = launch(RECIPE, ["--global-batch", 512, "--subset", 512, "--epochs", 1, "--warmup", "none",
                          "--run-dir", run, "--resume"], check=False)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert "another configuration" in line and "global_batch 256 -> 512" in line
    # Without --resume an existing run is not overwritten either.
    out = launch(RECIPE, ["--global-batch", 256, "--subset", 512, "--epochs", 1, "--run-dir", run], check=False)
    assert out.returncode == 2 and "--resume" in out.stderr
    assert json.loads(RunFolder(run).config.read_text())["global_batch"] == 256
