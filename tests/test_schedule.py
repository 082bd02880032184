import math

import pytest

from conftest import ROOT, launch

from largebatch.errors import UserError
from largebatch.training.config import Config
from largebatch.training.schedule import Schedule, lr_at, schedule_of


def sched(warmup="gradual", decay="step", B=8192):
    # 10 steps per epoch, 90 epochs: warmup 50 steps, decay at steps 300, 600, 800.
    return Schedule(0.1, 256, B, steps_per_epoch=10, epochs=90, warmup=warmup, warmup_epochs=5, decay=decay)


def test_linear_scaling_rule():
    assert sched().peak_lr == pytest.approx(3.2, abs=1e-12)
    assert sched(B=256).peak_lr == pytest.approx(0.1, abs=1e-12)
    assert sched(B=1024).peak_lr == pytest.approx(0.4, abs=1e-12)


def test_sqrt_and_no_scaling_are_table_2as_ablations():
    # At 8k (k = 32): the paper's sqrt(32) x 0.1 = 0.566 and 0.1, warmed up to from 0.1 like the linear rule.
    from dataclasses import replace
    root, flat = replace(sched(), lr_scaling="sqrt"), replace(sched(), lr_scaling="none")
    assert root.peak_lr == pytest.approx(0.1 * math.sqrt(32), abs=1e-12) and flat.peak_lr == pytest.approx(0.1)
    assert lr_at(0, root) == pytest.approx(0.1) and lr_at(50, root) == pytest.approx(0.1 * math.sqrt(32))
    assert lr_at(25, flat) == pytest.approx(0.1) and lr_at(300, flat) == pytest.approx(0.01)
    assert schedule_of(Config(global_batch=1024, lr_scaling="sqrt"), 10).peak_lr == pytest.approx(0.2)
    with pytest.raises(UserError, match="--lr-scaling sqrt does not apply to --optimizer adascale"):
        Config(lr_scaling="sqrt", optimizer="adascale").validate()


def test_gradual_warmup_is_per_step_from_base_lr():
    s = sched()
    assert s.warmup_steps == 50
    assert lr_at(0, s) == pytest.approx(0.1)
    assert lr_at(25, s) == pytest.approx(0.1 + (3.2 - 0.1) / 2)
    assert lr_at(1, s) - lr_at(0, s) == pytest.approx((3.2 - 0.1) / 50)  # constant increment
    assert lr_at(49, s) == pytest.approx(0.1 + 3.1 * 49 / 50)
    assert lr_at(50, s) == pytest.approx(3.2)


def test_constant_and_no_warmup():
    c, n = sched("constant"), sched("none")
    assert [lr_at(t, c) for t in (0, 25, 49)] == pytest.approx([0.1, 0.1, 0.1])
    assert lr_at(50, c) == pytest.approx(3.2)
    assert n.warmup_steps == 0
    assert [lr_at(t, n) for t in (0, 25, 50)] == pytest.approx([3.2, 3.2, 3.2])


@pytest.mark.parametrize("warmup", ["gradual", "constant", "none"])
def test_step_decay_at_epochs_30_60_80(warmup):
    s = sched(warmup)
    assert s.milestones == (300, 600, 800)
    assert lr_at(299, s) == pytest.approx(3.2)
    assert lr_at(300, s) == pytest.approx(0.32)
    assert lr_at(599, s) == pytest.approx(0.32)
    assert lr_at(600, s) == pytest.approx(0.032)
    assert lr_at(800, s) == pytest.approx(0.0032)
    assert lr_at(899, s) == pytest.approx(0.0032)


def test_no_warmup_at_or_below_base_batch():
    assert sched(B=256).warmup_steps == 0
    assert lr_at(0, sched(B=256)) == pytest.approx(0.1)


def test_cosine_after_warmup():
    s = sched(decay="cosine")
    assert lr_at(50, s) == pytest.approx(3.2)
    mid = 50 + (900 - 50) // 2
    assert lr_at(mid, s) == pytest.approx(3.2 * 0.5 * (1 + math.cos(math.pi * (mid - 50) / 850)))
    assert lr_at(mid, s) == pytest.approx(1.6, rel=1e-2)
    assert lr_at(900, s) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_header_prints_scaled_rate_for_8192(fmnist_dir):
    out = launch(ROOT / "recipes/fashion_mnist.py", ["--global-batch", 8192, "--micro-batch", 256, "--warmup-epochs", 5,
                                                  "--epochs", 90, "--dry-run"])
    header = out.stdout.strip().splitlines()[-1]
    assert "global batch 8192 = micro-batch 256 x 1 processes x 32 accumulation steps" in header
    assert "= 3.2 |" in header
    # 60000 / 8192 = 7.32 steps an epoch: 5 warmup epochs are 37 steps, 90 epochs 659.
    assert "warmup gradual 37 steps | 659 steps (7.324/epoch)" in header


def test_a_warmup_that_reaches_the_first_decay_is_refused():
    # B = 512 on 2048 examples is 4 steps an epoch: 2 epochs decay first at step round(8/3) = 3.
    with pytest.raises(UserError, match=r"--warmup-epochs 1 \(4 steps\) reaches the first step decay at epoch "
                                        r"0.6667 \(step 3\) of --epochs 2"):
        schedule_of(Config(global_batch=512, epochs=2, warmup_epochs=1), 4)
    with pytest.raises(UserError, match="step 3"):  # ending on the milestone: the peak would not be used either
        schedule_of(Config(global_batch=512, epochs=2, warmup_epochs=0.75), 4)
    s = schedule_of(Config(global_batch=512, epochs=2, warmup_epochs=0.5), 4)
    assert [lr_at(i, s) for i in range(4)] == pytest.approx([0.1, 0.15, 0.2, 0.02])  # the peak, then the decay
    schedule_of(Config(global_batch=512, epochs=2, warmup_epochs=1, schedule="cosine"), 4)  # no milestone to reach
    schedule_of(Config(global_batch=256, epochs=2, warmup_epochs=1), 4)  # no warmup at the base batch


def test_milestones_are_placed_in_examples_whatever_the_batch():
    # The 12-epoch Fashion-MNIST recipe: the last decay at epoch 10.667 for every batch size, to within one step.
    for B in (256, 4096, 8192):
        s = schedule_of(Config(global_batch=B, epochs=12, warmup_epochs=2), 60000 / B)
        assert abs(s.milestones[-1] * B / 60000 - 12 * 8 / 9) <= 0.5 * B / 60000
        assert abs(s.total_steps * B / 60000 - 12) <= 0.5 * B / 60000


def test_a_run_of_no_step_is_refused():
    with pytest.raises(UserError, match=r"--epochs 0.001 of 60000 examples is not one step .* at least 0.00853 epochs"):
        schedule_of(Config(global_batch=512, epochs=0.001), 60000 / 512)


def test_adascale_reads_the_base_schedule_at_its_progress():
    # B = 1024 is S = 4 base batches; 3 epochs of 2 steps at B are 24 steps of the base run (B = 256), whose
    # step decay falls at base steps 8, 16 and 21. Each step: rate r x base rate at floor(tau); tau += r.
    s = Schedule(0.1, 256, 1024, steps_per_epoch=2, epochs=3, decay="step", adascale=True)
    assert s.total_steps == 24 and s.warmup_steps == 0
    gains = [1.0, 4.0, 4.0, 3.0, 2.5, 4.0, 4.0, 2.0]
    taus = [0.0, 1.0, 5.0, 9.0, 12.0, 14.5, 18.5, 22.5]  # the last step takes tau to 24.5: the run ends
    expected = [0.1, 0.4, 0.4, 0.03, 0.025, 0.04, 0.004, 0.0002]
    assert [lr_at(t, s, r) for t, r in zip(taus, gains)] == pytest.approx(expected)
    assert taus[-1] + gains[-1] >= s.total_steps > taus[-1]
    # At the base batch the gain is 1 and AdaScale is the plain schedule.
    plain = Schedule(0.1, 256, 256, steps_per_epoch=2, epochs=3, adascale=True)
    assert plain.total_steps == 6 and [lr_at(t, plain, 1.0) for t in (1, 2)] == pytest.approx([0.1, 0.01])
