"""The learning rate as a pure function of the optimizer step (Goyal et al. 2017, sections 2.1-2.2).

Every rule about the rate lives here: linear scaling, warmup, decay, and AdaScale (Johnson et al.
2020). The engine writes `lr_at(tau, schedule, gain)` into the optimizer's param groups before every
update, instead of using a prepared LR scheduler: Accelerate steps a prepared scheduler once per
process per update by default, which silently shortens warmup and decay by the world size.

`tau` is the run's progress in steps of its schedule, and the run ends when it reaches `total_steps`.
Under linear scaling it is the optimizer step. Under AdaScale it is the scale-invariant progress: the
schedule is the base run's (the same epochs at the base batch, no warmup), each step advances tau by
the gain r in [1, S] and takes the rate r x the base rate at tau, so the run takes between
total_steps / S and total_steps steps, as many as the measured gradient noise makes useful.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import UserError
from .config import Config

# Step decay at epochs 30, 60 and 80 of the paper's 90, as fractions of the run.
STEP_MILESTONES = (1 / 3, 2 / 3, 8 / 9)


SCALING_POWER = {"linear": 1.0, "sqrt": 0.5, "none": 0.0}  # peak rate = base rate x k ** power


@dataclass(frozen=True)
class Schedule:
    base_lr: float  # eta at base_batch (paper: 0.1 at 256)
    base_batch: int
    global_batch: int
    steps_per_epoch: float  # N / B: training is counted in examples, an epoch is N of them
    epochs: float
    warmup: str = "gradual"  # gradual | constant | none
    warmup_epochs: float = 5
    decay: str = "step"  # step | cosine
    adascale: bool = False  # AdaScale over the base run's schedule instead of linear scaling and warmup
    lr_scaling: str = "linear"  # linear (the paper's rule) | sqrt | none: Table 2a's ablations

    @property
    def scale(self) -> float:
        """k = kn / 256: how many base batches one global batch holds."""
        return self.global_batch / self.base_batch

    @property
    def peak_lr(self) -> float:
        """Linear scaling rule: eta * kn / 256 (or eta * sqrt(kn / 256), or eta, for the ablations)."""
        return self.base_lr * self.scale ** SCALING_POWER[self.lr_scaling]

    @property
    def gained(self) -> bool:
        """AdaScale with a batch larger than the base batch (at or below it the gain is 1: plain steps)."""
        return self.adascale and self.scale > 1

    @property
    def length(self) -> float:
        """The schedule's length, unrounded: optimizer steps, or under AdaScale the base run's steps."""
        return self.epochs * self.steps_per_epoch * (self.scale if self.gained else 1)

    @property
    def total_steps(self) -> int:
        """The progress tau at which the run ends (see the module's docstring)."""
        return round(self.length)

    @property
    def warmup_steps(self) -> int:
        """Warmup is used only when the batch exceeds the base batch (the paper: kn > 256)."""
        if self.warmup == "none" or self.adascale or self.global_batch <= self.base_batch:
            return 0
        return round(self.warmup_epochs * self.steps_per_epoch)

    @property
    def milestones(self) -> tuple[int, ...]:
        return tuple(round(f * self.length) for f in STEP_MILESTONES)


def schedule_of(cfg: Config, steps_per_epoch: float) -> Schedule:
    """The schedule a run's options ask for, `steps_per_epoch` = N / B optimizer steps to an epoch: warmup,
    milestones and the run's end are placed in examples and rounded to steps once.

    A warmup that reaches the first step decay is refused: the peak rate would never be used.
    """
    s = Schedule(cfg.base_lr, cfg.base_batch, cfg.global_batch, steps_per_epoch, cfg.epochs, cfg.warmup,
                 cfg.warmup_epochs, cfg.schedule, adascale=cfg.optimizer == "adascale", lr_scaling=cfg.lr_scaling)
    if s.total_steps == 0:
        raise UserError(f"--epochs {cfg.epochs:g} of {cfg.global_batch * steps_per_epoch:.0f} examples is not one "
                        f"step of --global-batch {cfg.global_batch}; train for at least {1 / steps_per_epoch:.3g} "
                        f"epochs")
    if s.decay == "step" and s.warmup_steps and s.warmup_steps >= s.milestones[0]:
        first = STEP_MILESTONES[0] * cfg.epochs
        raise UserError(f"--warmup-epochs {cfg.warmup_epochs:g} ({s.warmup_steps} steps) reaches the first step decay "
                        f"at epoch {first:.4g} (step {s.milestones[0]}) of --epochs {cfg.epochs:g}, so the peak rate "
                        f"{s.peak_lr:g} would never be used; warm up for less than {first:.4g} epochs or train longer")
    return s


def lr_at(tau: float, s: Schedule, gain: float = 1.0) -> float:
    """Learning rate at progress `tau` (the 0-based optimizer step, or AdaScale's progress), per iteration.

    gradual: from base_lr at step 0, up by a constant amount each step, reaching peak_lr at the end of
    warmup; constant: base_lr during warmup, then a jump to peak_lr; then step (/10 at 1/3, 2/3 and
    8/9 of training) or cosine (from peak_lr at the end of warmup to 0 at the last step).
    Under AdaScale: the gain r (from `adascale_gain`) times the base run's rate at floor(tau).
    """
    if s.gained:
        return gain * _scheduled(int(tau), replace(s, global_batch=s.base_batch, adascale=False,
                                                   steps_per_epoch=s.steps_per_epoch * s.scale))
    return _scheduled(int(tau), s)


def _scheduled(step: int, s: Schedule) -> float:
    w = s.warmup_steps
    if step < w:
        if s.warmup == "constant":
            return s.base_lr
        return s.base_lr + (s.peak_lr - s.base_lr) * step / w
    if s.decay == "step":
        return s.peak_lr * 0.1 ** sum(step >= m for m in s.milestones)
    progress = (step - w) / max(1, s.total_steps - w)
    return s.peak_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def adascale_gain(trace: float, g_sq: float, base_batch: int, scale: float) -> float:
    """AdaScale's gain r = (σ² + μ²) / (σ²/S + μ²) (Johnson et al. 2020) for a batch S times `base_batch`.

    σ² = tr(Σ)/base_batch is the variance of one base-batch gradient and μ² = |G|² (both from
    `noise.NoiseScale`). r is 1 at S = 1, approaches S when noise dominates (the linear scaling rule)
    and 1 when it does not. Estimates that noise makes meaningless (negative, or none yet: NaN) are
    clamped into [1, S].
    """
    if scale <= 1:
        return 1.0
    var, mu_sq = max(trace, 0.0) / base_batch, max(g_sq, 0.0)
    if var + mu_sq == 0 or math.isnan(var + mu_sq):
        return 1.0
    return min(max((var + mu_sq) / (var / scale + mu_sq), 1.0), scale)
