import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, args, nproc=1, check=True, timeout=600):
    """Run a recipe-like script as a user would: plain python for 1 process, accelerate launch for more."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1", OMP_NUM_THREADS=str(max(1, 2 // nproc)))
    if nproc == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs/cpu_2proc.yaml"), "--num_processes", str(nproc),
               "--main_process_port", str(free_port()), str(script)]
    proc = subprocess.run(cmd + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def step_losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def final_params(run_dir) -> dict[str, torch.Tensor]:
    last = sorted((Path(run_dir) / "checkpoints").glob("step_*"))[-1]
    return load_file(last / "model.safetensors")


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST is missing at {FMNIST}: `make test` installs Debian's dataset-fashion-mnist")
    return FMNIST
