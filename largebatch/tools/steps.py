"""Steps to result (Shallue et al. 2019, "Measuring the Effects of Data Parallelism on Neural Network
Training"): the optimizer steps each batch size needs to first reach a target test error, read off the
runs' evaluation curves. Where doubling B halves the steps, more devices buy time one for one; where the
steps stop falling, they buy nothing: the answer to "how many GPUs can I use".
"""
from __future__ import annotations

import math
import statistics

from ..training.runfolder import EPOCH, TEST_ERROR


def steps_to_target(evals: list[dict], steps_per_epoch: float, target: float) -> int | None:
    """The optimizer steps taken when an evaluation first showed a test error at most `target` (a fraction);
    None when none did. Known to the evaluation interval: a run evaluated every epoch reads it to an epoch."""
    for e in evals:
        if e[TEST_ERROR] <= target:
            return round(e[EPOCH] * steps_per_epoch)
    return None


def summarize(steps: list[int | None]) -> tuple[float, int, int, int]:
    """(geometric mean, min, max) of the seeds that reached the target, and how many did not; the mean is
    geometric because steps are compared as ratios (the perfect-scaling line halves them per doubling).
    NaN and zeros when no seed reached it."""
    reached = [s for s in steps if s is not None]
    missed = len(steps) - len(reached)
    if not reached:
        return math.nan, 0, 0, missed
    return statistics.geometric_mean(reached), min(reached), max(reached), missed


def perfect_scaling(batches: list[int], means: list[float | None]) -> list[float] | None:
    """Steps at each batch if doubling it halved them, from the smallest batch that reached the target
    (None: none did)."""
    first = next((i for i, m in enumerate(means) if m is not None and math.isfinite(m)), None)
    return None if first is None else [means[first] * batches[first] / b for b in batches]
