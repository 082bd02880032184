"""Stopping cleanly when the machine is taken back: preemption, Ctrl-C, a killed launcher.

SLURM and spot instances send SIGTERM and kill the job after a grace period (SLURM's KillWait, 30 s by
default; torchrun forwards a launcher's SIGTERM or SIGINT to its workers and waits
TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s). Under `StopSignals` a signal only sets a flag; each optimizer
step sums the flags over the ranks in the all-reduce of its statistics (`step.StepStats.stop`, no
collective of its own; it runs beside the next step), and `stop_signal` reads the sum, so all ranks stop
after the same step (the one after the step that carried the flag), checkpoint it and exit with
`errors.EXIT_STOPPED`. Workers whose launcher is killed outright (SIGKILL leaves no time to forward
anything) get SIGTERM from the kernel (`die_with_launcher`) and stop the same way instead of running on
as orphans.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

import psutil
import torch

from ..errors import Stopped

SIGNALS = (signal.SIGTERM, signal.SIGINT)
LAUNCHED_BY = "LARGEBATCH_LAUNCHER_PID"  # set by `largebatch sweep` for the runs it starts
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The programs that start our workers: `accelerate launch` (its one-process launcher too), torchrun,
# and `largebatch sweep`; matched on the names a Python command line starts with.
_LAUNCHERS = ("accelerate", "torchrun", "torch.distributed.run", "torch.distributed.launch", "largebatch")


class StopSignals:
    """While inside `with StopSignals() as stop:`, SIGTERM and SIGINT set `stop.received` (the first
    signal's name) instead of ending the process; repeats are ignored (SLURM signals every task and the
    launcher forwards it again). Outside the main thread, where Python cannot take signals, it does nothing."""

    def __enter__(self) -> "StopSignals":
        self.received: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in SIGNALS}
        return self

    def _note(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stop_signal(stop: StopSignals, stopping: torch.Tensor | None, num_processes: int) -> str | None:
    """The signal to stop on after this step (None: go on), the same answer on every rank: a signal reaches
    the ranks at different moments, and they must stop after the same step to write one checkpoint.
    `stopping` is the all-reduced count of ranks that had a signal when the last step whose statistics have
    been summed ended (None: none summed since the last look; the sum runs beside the next step, so this
    is the step before the one just taken, or that one at an evaluation or checkpoint); one process needs
    no agreement and reads its own flag, the latest news."""
    if num_processes == 1:
        return stop.received
    if stopping is None or not stopping.item():
        return None
    return stop.received or "a signal to another rank"


def die_with_launcher() -> None:
    """Ask the kernel for SIGTERM when our launcher dies (Linux's parent-death signal), if a launcher
    started this process; if the launcher is already gone (killed while this process was starting), stop
    before training. A process started from a shell is left alone: `nohup` must keep it running."""
    if not sys.platform.startswith("linux"):
        return
    parent = psutil.Process().parent()
    try:
        program = [os.path.basename(word) for word in parent.cmdline()[:3]] if parent else []
    except psutil.Error:
        program = []
    if not any(word.startswith(_LAUNCHERS) for word in program):
        # torchrun marks its workers, `largebatch sweep` its runs: such a process under another parent
        # has been orphaned already.
        if LAUNCHED_BY in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
            raise Stopped("the launcher that started this process is gone (killed while it was starting); "
                          "nothing was trained: launch again (with --resume to continue a run)")
        return
    die_with_parent(parent.pid, signal.SIGTERM)


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent (pid `parent`) dies, or send it now if that
    parent is already gone (it died before the request: nobody will send the signal). Linux only."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
