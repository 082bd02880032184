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

import pytest
import torch

from conftest import ROOT, final_params, free_port, launch, launch_env

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
# `scontrol show hostnames LIST` for a comma-separated LIST (SLURM's also expands node[01-32]).
FAKE_SCONTROL = """#!/bin/bash
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
    # the script reads SLURM_GPUS_PER_NODE and SLURM_CPUS_PER_TASK, which SLURM sets only for these options
    assert "--gpus-per-node" in options and "--cpus-per-task" in options
    # the run checkpoints and stops on SIGTERM: it must reach the job steps (B:TERM would signal only the
    # batch shell) early enough for a step and a checkpoint
    grace = re.fullmatch(r"TERM@(\d+)", options["--signal"])
    assert grace and int(grace[1]) >= 60
    # a requeued job must resume, not start the run again
    assert "--requeue" in options and "SLURM_RESTART_COUNT" in text


@pytest.mark.slow
def test_two_nodes_train_as_two_processes_on_one(small_fmnist, tmp_path):
    args = ["--data-dir", small_fmnist, "--subset", 512, "--global-batch", 128, "--micro-batch", 32,
            "--epochs", 1]
    launch(RECIPE, [*args, "--run-dir", tmp_path / "one"], nproc=2)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    env = launch_env(2, PATH=f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
                     SLURM_NNODES="2", SLURM_GPUS_PER_NODE="1", SLURM_CPUS_PER_TASK="1", SLURM_JOB_ID="1",
                     SLURM_JOB_NODELIST="127.0.0.1,127.0.0.1", MAIN_PROCESS_PORT=str(free_port()),
                     ACCELERATE_CONFIG="accelerate_configs/cpu_2proc.yaml")
    cmd = ["bash", str(SBATCH), str(RECIPE), *map(str, args), "--run-dir", str(tmp_path / "nodes")]
    # Its own process group, so that a failure or a timeout leaves no launcher or worker behind.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-5000:]

    # Accelerate prints on each node's first process: two nodes, one header each, 2 processes in all.
    assert out.count("global batch 128 = micro-batch 32 x 2 processes x 2 accumulation steps") == 2, out[-3000:]
    one, nodes = tmp_path / "one", tmp_path / "nodes"
    # The same ranks in the same order, so the same all-reduces: bit for bit the same run.
    assert (nodes / "metrics.jsonl").read_text() == (one / "metrics.jsonl").read_text()
    a, b = final_params(one), final_params(nodes)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
