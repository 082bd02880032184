"""The run folder: where a run goes, and one run at a time in it.

Two runs writing one folder interleave their metrics and mix one run's config.json with the other's
checkpoints, and a resubmitted job may resume a run that is still going. `FolderLock` takes an exclusive
`flock` on the folder's lock file (runfolder.py) for the run's lifetime: rank 0 holds it for all ranks, the kernel
drops it when the process ends however it ends (SIGKILL included), and a second run is refused in one line that
names the holder. (On a shared file system the lock is as good as its `flock`: NFSv4 and Lustre with
`-o flock` honour it across nodes.)
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from ..errors import UserError, write_failure
from .config import Config
from .runfolder import RunFolder


def run_dir_of(cfg: Config, dataset: str) -> Path:
    """--run-dir; by default runs/<dataset>-B<batch>-seed<seed>, or one folder per run of a W&B agent."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return Path(f"runs/wandb-sweep-{os.environ['WANDB_SWEEP_ID']}/{os.environ['WANDB_RUN_ID']}")
    return Path(f"runs/{dataset}-B{cfg.global_batch}-seed{cfg.seed}")


class FolderLock:
    """The run folder's lock: `acquire` before anything in the folder is read or written, `release` at the end."""

    def __init__(self):
        self.handle = None

    def acquire(self, run_dir: Path, accelerator: Accelerator) -> None:
        """Create `run_dir` and lock it; a folder that cannot be written, or that another live run holds,
        raises a UserError on every rank."""
        problem = self._lock(run_dir) if accelerator.is_main_process else None
        if accelerator.num_processes > 1:
            shared = [problem]
            broadcast_object_list(shared, from_process=0)
            problem = shared[0]
        if problem:
            raise UserError(problem)

    def _lock(self, run_dir: Path) -> str | None:
        if run_dir.exists() and not run_dir.is_dir():
            return f"--run-dir {run_dir} is a file, not a folder; choose another --run-dir"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            handle = open(RunFolder(run_dir).lock, "a+")
        except OSError as e:
            return f"cannot write in --run-dir {run_dir} ({e.strerror}); choose a folder you can write to"
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            return (f"--run-dir {run_dir} is in use by {holder}; wait for that run to end (or stop it), or choose "
                    f"another --run-dir")
        if not os.access(run_dir, os.W_OK):
            handle.close()
            return f"cannot write in --run-dir {run_dir} (read-only); choose a folder you can write to"
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"the run of pid {os.getpid()} on {socket.gethostname()} (started "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
            handle.flush()
        except OSError as e:  # a full disk: nothing of the run could be written either
            with contextlib.suppress(OSError):  # closes the file even when its last flush fails again
                handle.close()
            cause, fix = write_failure(e, run_dir)
            return f"cannot write in --run-dir {run_dir} ({cause}); {fix}"
        self.handle = handle
        return None

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file drops the lock
            self.handle = None
