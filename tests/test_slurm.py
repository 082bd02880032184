"""accelerate_configs/slurm.sbatch: its header, and its launch line run as two "nodes" on this machine.

There is no SLURM here: the test runs the batch script itself with the variables SLURM would set, and
`srun` and `scontrol` stand-ins on PATH that start one task per node with its SLURM_NODEID on
127.0.0.1. Each node's `accelerate launch` starts one CPU worker; together they must train exactly as
the 2 processes of cpu_2proc.yaml on one machine.
"""
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from conftest import ROOT, final_params, free_port, launch, launch_env

from largebatch.training.runfolder import RunFolder

SBATCH = ROOT / "accelerate_configs/slurm.sbatch"
RECIPE = ROOT / "recipes/fashion_mnist.py"

# srun for one machine: SLURM_NNODES tasks with SLURM_NODEID 0, 1, ...; as with --kill-on-bad-exit, one
# task failing ends the others.
FAKE_SRUN = """#!/bin/bash
while [[ $1 == -* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node "$@" &
    pids+=($!)
done
for _ in "${pids[@]}"; do
    if ! wait -n; then
        kill "${pids[@]}" 2>/dev/null
        exit 1
    fi
done
"""
# `scontrol show hostnames LIST` for a comma-separated LIST (SLURM's also expands node[01-32]); `scontrol
# requeue ID` is noted in $SCONTROL_LOG.
FAKE_SCONTROL = """#!/bin/bash
if [[ $1 == requeue ]]; then echo "requeue $2" >> "$SCONTROL_LOG"; exit 0; fi
tr , '\\n' <<<"$3"
"""


def sbatch_options() -> dict[str, str]:
    """The #SBATCH options as sbatch reads them: up to the first line that is neither a comment nor blank."""
    options = {}
    for line in SBATCH.read_text().splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#SBATCH"):
            name, _, value = line.removeprefix("#SBATCH").strip().partition("=")
            options[name] = value
    return options


def test_sbatch_header_asks_for_what_the_launch_uses():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    options = sbatch_options()
    text = SBATCH.read_text()
    # sbatch silently ignores an #SBATCH line after the first command
    assert text.count("#SBATCH") == len(options)
    # one launcher per node: a second task on a node would start a second set of workers as the same rank
    assert options["--ntasks-per-node"] == "1"
    # the script reads SLURM_GPUS_PER_NODE, which SLURM sets only for this option; whole nodes rather than a
    # fixed core count, which would leave the job pending forever on smaller nodes
    assert "--gpus-per-node" in options and "--exclusive" in options and "--cpus-per-task" not in options
    # the run checkpoints and stops on SIGTERM: it must reach the job steps (B:TERM would signal only the
    # batch shell) early enough for a step and a checkpoint
    grace = re.fullmatch(r"TERM@(\d+)", options["--signal"])
    assert grace and int(grace[1]) >= 60
    # a requeued job must resume, not start the run again
    assert "--requeue" in options and "SLURM_RESTART_COUNT" in text


def _fake_slurm(tmp_path, nodes=2, **env):
    """The environment of a batch job on `nodes` nodes, with the srun and scontrol stand-ins on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, script in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    return launch_env(2, PATH=f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
                      SLURM_NNODES=str(nodes), SLURM_CPUS_ON_NODE="1", SLURM_JOB_ID="1",
                      SLURM_SUBMIT_DIR=str(tmp_path), SLURM_JOB_NODELIST=",".join(["127.0.0.1"] * nodes),
                      MAIN_PROCESS_PORT=str(free_port()), SCONTROL_LOG=str(tmp_path / "scontrol.log"),
                      ACCELERATE_CONFIG="accelerate_configs/cpu_2proc.yaml", **env)


def _sbatch(env, *args, timeout=300):
    """Run the batch script as SLURM would; its own process group, so nothing is left behind."""
    proc = subprocess.Popen(["bash", str(SBATCH), *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


@pytest.mark.parametrize("gpus", ["0", None])
def test_no_processes_per_node_is_one_line(tmp_path, gpus):
    """A CPU cluster: --gpus-per-node=0 (or none) without LARGEBATCH_PROCS_PER_NODE is refused before launching
    (it used to reach torchrun as --num_processes 0: a bare AssertionError)."""
    env = _fake_slurm(tmp_path, **({} if gpus is None else {"SLURM_GPUS_PER_NODE": gpus}))
    status, out = _sbatch(env, RECIPE, "--dry-run")
    assert status == 2 and out.count("\n") == 1 and out.startswith("error: ") and "LARGEBATCH_PROCS_PER_NODE" in out, out


@pytest.mark.slow
def test_two_nodes_train_as_two_processes_on_one(small_fmnist, tmp_path):
    """Two "nodes" of one CPU process each (LARGEBATCH_PROCS_PER_NODE, as on a CPU cluster) train exactly as
    cpu_2proc.yaml's 2 processes on one machine."""
    args = ["--data-dir", small_fmnist, "--subset", 512, "--global-batch", 128, "--micro-batch", 32,
            "--epochs", 1]
    launch(RECIPE, [*args, "--run-dir", tmp_path / "one"], nproc=2)
    env = _fake_slurm(tmp_path, SLURM_GPUS_PER_NODE="0", LARGEBATCH_PROCS_PER_NODE="1")
    status, out = _sbatch(env, RECIPE, *args, "--run-dir", tmp_path / "nodes")
    assert status == 0, out[-5000:]

    # Accelerate prints on each node's first process: two nodes, one header each, 2 processes in all.
    assert out.count("global batch 128 = micro-batch 32 x 2 processes x 2 accumulation steps") == 2, out[-3000:]
    one, nodes = tmp_path / "one", tmp_path / "nodes"
    # The same ranks in the same order, so the same all-reduces: bit for bit the same run.
    assert RunFolder(nodes).metrics.read_text() == RunFolder(one).metrics.read_text()
    a, b = final_params(one), final_params(nodes)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "scontrol.log").exists()  # a finished job is not requeued


@pytest.mark.slow
def test_a_checkpointed_stop_requeues_the_job_and_a_failure_does_not(small_fmnist, tmp_path):
    """SIGTERM to the job (SLURM's warning before the time limit): the workers checkpoint and stop, and the
    batch script requeues its job and exits 0. A run that fails (bad options) is not requeued."""
    env = _fake_slurm(tmp_path, SLURM_GPUS_PER_NODE="1")
    args = ["--data-dir", small_fmnist, "--subset", 2048, "--global-batch", 128, "--micro-batch", 32,
            "--epochs", 50, "--checkpoint-every", 4, "--run-dir", tmp_path / "run"]
    proc = subprocess.Popen(["bash", str(SBATCH), str(RECIPE), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list((tmp_path / "run/checkpoints").glob("step_*")):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
        # As SLURM's preemption notice: the batch shell and every process of the job step (each node's
        # launcher and its workers), not srun itself, which waits for its tasks.
        shell = psutil.Process(proc.pid)
        for p in [shell, *shell.children(recursive=True)]:
            if "bin/srun" not in " ".join(p.cmdline()):
                p.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 1\n", out[-3000:]
    assert "requeueing job 1" in out and not list(tmp_path.glob(".largebatch-stopped-*"))

    (tmp_path / "scontrol.log").unlink()
    status, out = _sbatch(env, RECIPE, "--global-batch", 100, "--micro-batch", 32)
    assert status != 0 and not (tmp_path / "scontrol.log").exists(), out[-3000:]
