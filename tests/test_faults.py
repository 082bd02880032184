"""Faults survived and nothing lost: killed workers, corrupt checkpoints, a full disk, divergence."""
import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from conftest import ROOT, final_params, free_port, launch, launch_env, step_losses

from largebatch.training.runfolder import RunFolder

pytestmark = pytest.mark.slow  # trains: see `pytest -m "not slow"` for the fast tier

RECIPE = ROOT / "recipes/fashion_mnist.py"


def _args(data, run_dir, *extra):
    return ["--data-dir", data, "--global-batch", 256, "--micro-batch", 64, "--subset", 2048, "--epochs", 2,
            "--warmup", "none",
            "--checkpoint-every", 2, "--keep-checkpoints", 3, "--run-dir", run_dir, *extra]


def _same_params(a_dir, b_dir):
    a, b = final_params(a_dir), final_params(b_dir)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.numerics
def test_killed_worker_is_restarted_and_finishes_bitwise_identical(tmp_path, small_fmnist):
    """SIGKILL one of two workers at a random checkpoint; torchrun restarts both and --resume continues."""
    launch(RECIPE, _args(small_fmnist, tmp_path / "straight"), nproc=2)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "accelerate_configs/cpu_2proc.yaml"), "--main_process_port", str(free_port()),
           "--max_restarts", "1", "--monitor_interval", "0.5", str(RECIPE)]
    cmd += [str(a) for a in _args(small_fmnist, run, "--resume")]
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    target = f"step_{random.choice([2, 4, 6, 8, 10]):08d}"
    deadline = time.time() + 300
    while not (RunFolder(run).checkpoints / target).exists() and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.02)
    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if str(RECIPE) in " ".join(p.cmdline())]
    assert len(workers) == 2, workers
    random.choice(workers).send_signal(signal.SIGKILL)
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output[-4000:]
    assert output.count("resuming from") == 1, output[-4000:]  # one restart, from a checkpoint
    assert _same_params(run, tmp_path / "straight")
    assert step_losses(run) == step_losses(tmp_path / "straight")


def test_corrupt_checkpoint_is_skipped_for_the_previous_one(tmp_path, small_fmnist):
    launch(RECIPE, _args(small_fmnist, tmp_path / "straight"))
    run = tmp_path / "run"
    launch(RECIPE, _args(small_fmnist, run))
    newest = sorted(RunFolder(run).checkpoints.glob("step_*"))[-1]
    model = newest / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated
    out = launch(RECIPE, _args(small_fmnist, run, "--resume"))
    assert f"skipping checkpoint {newest}" in out.stderr and "model.safetensors" in out.stderr
    assert "resuming from" in out.stdout and "step_00000014" in out.stdout
    assert _same_params(run, tmp_path / "straight")


def test_full_disk_during_checkpoint_keeps_the_previous_one(tmp_path, small_fmnist):
    launch(RECIPE, _args(small_fmnist, tmp_path / "straight"))
    run = tmp_path / "run"
    env_script = ROOT / "tests/full_disk_train.py"
    out = subprocess.run([sys.executable, str(env_script)] + [str(a) for a in _args(small_fmnist, run)], cwd=ROOT,
                         env=launch_env(FULL_AT="3"), capture_output=True, text=True)  # the straight run's threads
    assert out.returncode == 2, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert "No space left on device" in line and "step_00000004" in line and "is intact" in line, line
    assert sorted(p.name for p in RunFolder(run).checkpoints.iterdir()) == ["step_00000002", "step_00000004"]
    resumed = launch(RECIPE, _args(small_fmnist, run, "--resume"))
    assert "resuming from" in resumed.stdout and "step_00000004" in resumed.stdout
    assert _same_params(run, tmp_path / "straight")
    assert step_losses(run) == step_losses(tmp_path / "straight")


def test_divergence_stops_with_step_rate_and_cause(tmp_path, fmnist_dir):
    run = tmp_path / "run"
    out = launch(RECIPE, ["--global-batch", 1024, "--micro-batch", 256, "--subset", 8192, "--epochs", 2,
                          "--base-lr", 1e6, "--warmup", "none", "--checkpoint-every", 1, "--run-dir", run],
                 check=False)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert "diverged" in line and "learning rate 4e+06" in line and "no warmup" in line, line
    step = int(line.split("at step ")[1].split(",")[0])
    kept = sorted(RunFolder(run).checkpoints.glob("step_*"))
    assert kept and kept[-1].name == f"step_{step:08d}"  # checkpoints up to the step before; none after
    assert str(kept[-1]) in line
    params = final_params(run)
    assert all(torch.isfinite(v.float()).all() for v in params.values())


def test_resume_with_allowed_change_of_batch(tmp_path, small_fmnist):
    run = tmp_path / "run"
    launch(RECIPE, _args(small_fmnist, run, "--epochs", 1))
    refused = launch(RECIPE, _args(small_fmnist, run, "--epochs", 2, "--resume"), check=False)
    assert refused.returncode == 2 and "--allow-change epochs" in refused.stderr
    out = launch(RECIPE, _args(small_fmnist, run, "--epochs", 2, "--resume", "--allow-change", "epochs"))
    assert "epochs 1.0 -> 2.0" in out.stderr and "resuming from" in out.stdout
    # The 2-epoch schedule places its decays later: at step 8 it is back at 0.01 where the 1-epoch run ended at 1e-4.
    assert ("warning: the changed options reschedule the rate: 0.0001 at step 7 under the checkpoint's options, "
            "0.01 at step 8 under these (100x up)") in out.stderr
    assert len(step_losses(run)) == 16


def test_killed_loader_worker_is_one_line(tmp_path, small_fmnist):
    """The OOM killer takes a --workers process: one line naming it, the likely cause and the checkpoint, exit 2."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(RECIPE), *map(str, _args(small_fmnist, run, "--workers", 2,
                                                                          "--epochs", 4))],
                            cwd=ROOT, env=dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    target = RunFolder(run).checkpoints / "step_00000002"
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    worker = psutil.Process(proc.pid).children()[0]  # a DataLoader worker
    worker.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    # torch says "(pid N) is killed by signal: Killed" or "(pid(s) N) exited unexpectedly", by which of its
    # checks sees the death first.
    assert any(line.startswith(f"error: a data-loading worker died (DataLoader worker ({said}); a worker killed "
                               f"outright is most often the out-of-memory killer's doing; give the job more memory or "
                               f"fewer --workers (now 2), then rerun with --resume; the checkpoint ")
               for said in (f"pid {worker.pid}) is killed by signal: Killed", f"pid(s) {worker.pid}) exited unexpectedly")), line
    assert "step_0000000" in line
