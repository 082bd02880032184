"""The gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, appendix A).

Σ is the covariance of one example's gradient and G the true gradient. From the squared norm of a
gradient over b_small examples and of one over b_big examples (the same step's micro-batch and full
batch), these two are unbiased:

    |G|²  ≈ (b_big·|G_big|² − b_small·|G_small|²) / (b_big − b_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/b_small − 1/b_big)

Each is noisy, so each is smoothed by an exponential moving average before the ratio is taken. Training
at batches well below B_simple wastes steps; well above it wastes examples: the critical batch.
"""
from __future__ import annotations

import math

from .runfolder import LR, NOISE_SCALE


def unbiased(small_sq: float, b_small: int, big_sq: float, b_big: int) -> tuple[float, float]:
    """(tr(Σ), |G|²) estimated from one pair of squared gradient norms."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
    g_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    return trace, g_sq


class NoiseScale:
    """Bias-corrected moving averages of tr(Σ) and |G|², and their ratio B_simple."""

    def __init__(self, decay: float = 0.95):
        self.decay = decay
        self.trace = self.g_sq = 0.0
        self.updates = 0

    def update(self, small_sq: float, b_small: int, big_sq: float, b_big: int) -> None:
        trace, g_sq = unbiased(small_sq, b_small, big_sq, b_big)
        self.trace = self.decay * self.trace + (1 - self.decay) * trace
        self.g_sq = self.decay * self.g_sq + (1 - self.decay) * g_sq
        self.updates += 1

    def estimates(self) -> tuple[float, float]:
        """(tr(Σ), |G|²), corrected for the averages' start at zero."""
        if not self.updates:
            return math.nan, math.nan
        correction = 1 - self.decay ** self.updates
        return self.trace / correction, self.g_sq / correction

    @property
    def b_simple(self) -> float:
        trace, g_sq = self.estimates()
        return trace / g_sq if g_sq > 0 else math.inf

    def state(self) -> list[float]:
        return [self.trace, self.g_sq, float(self.updates)]

    def load(self, state: list[float]) -> None:
        self.trace, self.g_sq, self.updates = state[0], state[1], int(state[2])


def critical_batch(steps: list[dict]) -> tuple[float, list[dict]]:
    """(the critical-batch estimate, about ten rows over the run for a table).

    The estimate is B_simple averaged over the second half of the steps at the peak learning rate
    (after warmup, before the first decay), where training makes most of its progress. After a decay
    |G|² falls to the noise floor and B_simple grows without bound, as McCandlish et al. describe.
    """
    rows = [r for r in steps if NOISE_SCALE in r]
    if not rows:
        return math.nan, []
    peak = max(r[LR] for r in rows)
    at_peak = [r for r in rows if r[LR] >= 0.999 * peak]
    late = [r[NOISE_SCALE] for r in at_peak[len(at_peak) // 2:] if math.isfinite(r[NOISE_SCALE])]
    every = max(1, len(rows) // 10)
    return (sum(late) / len(late) if late else math.nan), rows[every - 1::every]


def recommend(b_simple: float, micro: int, base_lr: float, base_batch: int) -> tuple[int, float]:
    """(global batch, learning rate): the largest power-of-two multiple of the micro-batch not above
    B_simple (past it, larger batches stop cutting the number of steps), with the linearly scaled rate."""
    batch = micro
    while batch * 2 <= b_simple:
        batch *= 2
    return batch, base_lr * batch / base_batch
