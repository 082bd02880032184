import gzip
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from largebatch.training import checkpoint
from largebatch.training.metrics import read_metrics
from largebatch.training.runfolder import LOSS, RunFolder

ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(script, args, nproc=1, config="cpu_2proc.yaml") -> list[str]:
    """A recipe-like script as a user would start it: plain python for 1 process, accelerate launch for more
    (with `config` from accelerate_configs/, in fp32: the ZeRO configs' bf16 is for GPUs)."""
    if nproc == 1:
        return [sys.executable, str(script), *map(str, args)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "accelerate_configs" / config), "--num_processes", str(nproc), "--mixed_precision", "no",
            "--main_process_port", str(free_port()), str(script), *map(str, args)]


def launch_env(nproc=1, **extra) -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1", OMP_NUM_THREADS=str(max(1, 2 // nproc)), **extra)


def launch(script, args, nproc=1, check=True, timeout=600, config="cpu_2proc.yaml", **env):
    """Run a recipe-like script as a user would (see `launch_command`); `env` adds environment variables."""
    cmd = launch_command(script, args, nproc, config)
    proc = subprocess.run(cmd, cwd=ROOT, env=launch_env(nproc, **env), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def step_losses(run_dir) -> list[float]:
    steps, _ = read_metrics(RunFolder(run_dir).metrics)
    return [r[LOSS] for r in steps]


# Float drift between two runs of the same steps whose sums are taken in another order (another split of the
# batch, another engine, another instruction set): README, "What is exact and what drifts".
UNIT_ROUNDOFF = 2.0 ** -24  # float32
AMPLIFICATION = 8.0  # per optimizer step: 3 bits


def drift_tolerance(batch: int, loss: float, step: int) -> float:
    """The rule: step k's losses may differ by the float32 rounding bound of a sum over the batch's B
    examples (B·u·|loss|, Higham's bound for n terms of one sign), amplified 8x by each step before it."""
    return batch * UNIT_ROUNDOFF * abs(loss) * AMPLIFICATION ** step


def drift_used(losses, reference, batch: int) -> tuple[float, float]:
    """(the largest loss difference, the largest share of the rule's bound any step used): for reports."""
    pairs = list(enumerate(zip(losses, reference)))
    return (max(abs(a - b) for _, (a, b) in pairs),
            max(abs(a - b) / drift_tolerance(batch, b, k) for k, (a, b) in pairs))


def assert_within_drift(losses, reference, batch: int) -> None:
    assert len(losses) == len(reference), (losses, reference)
    over = [(k, a, b) for k, (a, b) in enumerate(zip(losses, reference)) if abs(a - b) > drift_tolerance(batch, b, k)]
    assert not over, f"steps beyond the drift rule (step, loss, reference): {over}"


def final_params(run_dir) -> dict[str, torch.Tensor]:
    last = checkpoint.completed(RunFolder(run_dir).checkpoints)[-1]
    return load_file(last / "model.safetensors")


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST is missing at {FMNIST}: `make test` installs Debian's dataset-fashion-mnist")
    return FMNIST


def write_idx(path, array: np.ndarray, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture(scope="session")
def small_fmnist(fmnist_dir, tmp_path_factory) -> Path:
    """The first 4096 training and 1000 test images of Fashion-MNIST: runs whose evaluation is cheap."""
    from largebatch.training.data import read_idx

    folder = tmp_path_factory.mktemp("fmnist-small")
    for prefix, n in (("train", 4096), ("t10k", 1000)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            write_idx(folder / name, read_idx(fmnist_dir / name)[:n].numpy())
    return folder
