"""The Fashion-MNIST recipe on a disk that fills up during the N-th checkpoint (FULL_AT, default 2)."""
import errno
import os
from pathlib import Path

from accelerate import Accelerator

from largebatch.training.recipes import run_recipe

real_save_state = Accelerator.save_state
calls = {"n": 0}


def save_state_on_full_disk(self, output_dir=None, **kwargs):
    calls["n"] += 1
    if calls["n"] < int(os.environ.get("FULL_AT", "2")):
        return real_save_state(self, output_dir, **kwargs)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 1000)  # a partial write, then the disk is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


Accelerator.save_state = save_state_on_full_disk
run_recipe("fashion_mnist")
