"""The learning rate as a pure function of the optimizer step (Goyal et al. 2017, sections 2.1-2.2).

The engine writes `lr_at(step, schedule)` into the optimizer's param groups before every update,
instead of using a prepared LR scheduler: Accelerate steps a prepared scheduler once per process per
update by default, which silently shortens warmup and decay by the world size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Step decay at epochs 30, 60 and 80 of the paper's 90, as fractions of the run.
STEP_MILESTONES = (1 / 3, 2 / 3, 8 / 9)


@dataclass(frozen=True)
class Schedule:
    base_lr: float  # eta at base_batch (paper: 0.1 at 256)
    base_batch: int
    global_batch: int
    steps_per_epoch: int
    epochs: float
    warmup: str = "gradual"  # gradual | constant | none
    warmup_epochs: float = 5
    decay: str = "step"  # step | cosine

    @property
    def peak_lr(self) -> float:
        """Linear scaling rule: eta * kn / 256."""
        return self.base_lr * self.global_batch / self.base_batch

    @property
    def total_steps(self) -> int:
        return round(self.epochs * self.steps_per_epoch)

    @property
    def warmup_steps(self) -> int:
        """Warmup is used only when the batch exceeds the base batch (the paper: kn > 256)."""
        if self.warmup == "none" or self.global_batch <= self.base_batch:
            return 0
        return round(self.warmup_epochs * self.steps_per_epoch)

    @property
    def milestones(self) -> tuple[int, ...]:
        return tuple(round(f * self.epochs * self.steps_per_epoch) for f in STEP_MILESTONES)


def lr_at(step: int, s: Schedule) -> float:
    """Learning rate for optimizer step `step` (0-based), per iteration, not per epoch.

    gradual: from base_lr at step 0, up by a constant amount each step, reaching peak_lr at the end of
    warmup; constant: base_lr during warmup, then a jump to peak_lr; then step (/10 at 1/3, 2/3 and
    8/9 of training) or cosine (from peak_lr at the end of warmup to 0 at the last step).
    """
    w = s.warmup_steps
    if step < w:
        if s.warmup == "constant":
            return s.base_lr
        return s.base_lr + (s.peak_lr - s.base_lr) * step / w
    if s.decay == "step":
        return s.peak_lr * 0.1 ** sum(step >= m for m in s.milestones)
    progress = (step - w) / max(1, s.total_steps - w)
    return s.peak_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
