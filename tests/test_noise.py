"""The noise-scale estimator on linear regression, where tr(Σ) and |G|² are known in closed form."""
import math

import pytest
import torch

from largebatch.training.noise import NoiseScale, unbiased
from largebatch.training.runfolder import RunFolder


def test_recovers_trace_and_gradient_norm_of_linear_regression():
    # Loss ½(x·w − y)², x ~ N(0, I_d), y = x·w* + ε, ε ~ N(0, s²), evaluated at w = w* + δ:
    # one example's gradient g = x xᵀδ − x ε, so G = δ and Σ = δδᵀ + (|δ|² + s²) I (Gaussian fourth moments):
    # tr(Σ) = |δ|² + d(|δ|² + s²), |G|² = |δ|².
    torch.manual_seed(0)
    d, s, b_small, b_big, trials = 8, 1.5, 16, 256, 3000
    delta = torch.randn(d) * 0.5
    true_trace = delta.dot(delta) + d * (delta.dot(delta) + s ** 2)
    true_g_sq = delta.dot(delta)
    x = torch.randn(trials, b_big, d, dtype=torch.float64)
    eps = torch.randn(trials, b_big, dtype=torch.float64) * s
    g = x * ((x @ delta.double()) - eps).unsqueeze(-1)  # per-example gradients
    small_sq = g[:, :b_small].mean(1).pow(2).sum(1)
    big_sq = g.mean(1).pow(2).sum(1)
    est = NoiseScale(decay=0.999)
    for a, b in zip(small_sq.tolist(), big_sq.tolist()):
        est.update(a, b_small, b, b_big)
    trace, g_sq = est.estimates()
    assert trace == pytest.approx(true_trace.item(), rel=0.05)
    assert g_sq == pytest.approx(true_g_sq.item(), rel=0.05)
    assert est.b_simple == pytest.approx((true_trace / true_g_sq).item(), rel=0.08)


def test_unbiased_on_exact_expectations():
    # E|G_b|² = |G|² + tr(Σ)/b exactly: the estimators invert it.
    trace, g_sq = 40.0, 2.0
    assert unbiased(g_sq + trace / 8, 8, g_sq + trace / 64, 64) == pytest.approx((trace, g_sq))
    with pytest.raises(ValueError):
        unbiased(1.0, 64, 1.0, 64)


def test_bias_correction_and_state_round_trip():
    est = NoiseScale(decay=0.9)
    assert math.isnan(est.estimates()[0])
    est.update(2.0 + 40 / 8, 8, 2.0 + 40 / 64, 64)
    assert est.estimates() == pytest.approx((40.0, 2.0))  # one update: no shrinkage toward 0
    again = NoiseScale(decay=0.9)
    again.load(est.state())
    assert again.b_simple == est.b_simple == pytest.approx(20.0)


def test_adascale_gain_is_one_at_one_worker_and_at_most_the_scale():
    from largebatch.training.schedule import adascale_gain
    assert adascale_gain(trace=100.0, g_sq=1.0, base_batch=32, scale=1) == 1.0
    assert adascale_gain(trace=1e9, g_sq=1e-9, base_batch=32, scale=16) == pytest.approx(16, rel=1e-6)  # all noise
    assert adascale_gain(trace=0.0, g_sq=1.0, base_batch=32, scale=16) == 1.0  # no noise: no gain
    # σ² = 64/32 = 2, μ² = 2, S = 4: (2 + 2) / (0.5 + 2) = 1.6
    assert adascale_gain(trace=64.0, g_sq=2.0, base_batch=32, scale=4) == pytest.approx(1.6)
    for trace, g_sq in [(-5.0, 1.0), (5.0, -1.0), (float("nan"), 1.0)]:
        assert 1.0 <= adascale_gain(trace, g_sq, 32, 8) <= 8.0


@pytest.mark.slow
def test_runs_log_the_noise_scale_and_adascale_gain(tmp_path, small_fmnist):
    import shutil

    from conftest import ROOT, launch
    from largebatch.training.metrics import read_metrics
    from largebatch.training.schedule import Schedule, lr_at

    run = tmp_path / "ada"
    args = ["--data-dir", small_fmnist, "--global-batch", 1024, "--micro-batch", 256, "--subset", 4096, "--epochs", 1,
            "--optimizer", "adascale", "--checkpoint-every", 1, "--keep-checkpoints", 20]
    launch(ROOT / "recipes/fashion_mnist.py", [*args, "--run-dir", run])
    steps, _ = read_metrics(RunFolder(run).metrics)
    assert steps[0]["gain"] == 1.0  # no estimate before the first step
    for row in steps:
        assert 1.0 <= row["gain"] <= 4.0 and row["noise_scale"] > 0 and row["grad_sq"] > 0
        assert math.isclose(row["noise_scale"], row["grad_var"] / row["grad_sq"], rel_tol=1e-9)
    # AdaScale's progress: tau grows by each step's gain over the 16 steps of the B = 256 run, which ends
    # the run; each rate is the gain times the base run's rate at tau.
    base = Schedule(0.1, 256, 1024, steps_per_epoch=4, epochs=1, adascale=True)
    assert [r["tau"] for r in steps] == pytest.approx([sum(r["gain"] for r in steps[:i]) for i in range(len(steps))])
    assert steps[-1]["tau"] < 16 <= steps[-1]["tau"] + steps[-1]["gain"]
    assert 4 <= len(steps) <= 16 and any(r["gain"] < 4 for r in steps)  # more steps than linear scaling's 4
    assert [r["lr"] for r in steps] == pytest.approx([lr_at(r["tau"], base, r["gain"]) for r in steps])
    # Resumed from the middle, tau comes back with the checkpoint: the same steps, rates and gains.
    for later in sorted(RunFolder(run).checkpoints.glob("step_*"))[2:]:
        shutil.rmtree(later)
    launch(ROOT / "recipes/fashion_mnist.py", [*args, "--run-dir", run, "--resume"])
    assert read_metrics(RunFolder(run).metrics)[0] == steps
    # No accumulation, no micro-batch gradient to compare: AdaScale is refused in one line.
    out = launch(ROOT / "recipes/fashion_mnist.py", ["--global-batch", 256, "--micro-batch", 256, "--subset", 512,
                                                     "--epochs", 1, "--optimizer", "adascale",
                                                     "--run-dir", tmp_path / "one"], check=False)
    assert out.returncode == 2 and "needs gradient accumulation (now 1)" in out.stderr


def test_recommendation_is_the_largest_power_of_two_multiple_not_above_b_simple():
    from largebatch.training.noise import critical_batch, recommend
    assert recommend(544.0, 32, 0.1, 256) == (512, 0.2)
    assert recommend(10.0, 32, 0.1, 256) == (32, 0.0125)  # never below one micro-batch
    # Warmup for 10 steps, the peak rate for 40, then a decay where the estimate blows up.
    lrs = [0.1 * (1 + i / 10) for i in range(10)] + [0.2] * 40 + [0.02] * 50
    steps = [dict(step=i, lr=lr, noise_scale=float(i) if i < 50 else math.inf) for i, lr in enumerate(lrs)]
    b, rows = critical_batch(steps + [dict(epoch=1.0, test_error=0.1)])
    assert b == sum(range(30, 50)) / 20  # the second half of the peak-rate steps
    assert len(rows) == 10 and rows[-1]["step"] == 99


@pytest.mark.slow
def test_noise_command(tmp_path, small_fmnist, capsys, monkeypatch):
    import json
    from conftest import ROOT

    from largebatch.tools.cli import main
    from largebatch.training.noise import critical_batch, recommend
    from largebatch.training.metrics import read_metrics

    monkeypatch.chdir(ROOT)
    main(["noise", "--global-batch", "256", "--micro-batch", "64", "--run-dir", str(tmp_path / "n"),
          "--", "--subset", "2560", "--data-dir", str(small_fmnist)])
    out = capsys.readouterr().out
    steps, _ = read_metrics(tmp_path / "n/metrics.jsonl")
    b, rows = critical_batch(steps)
    batch, lr = recommend(b, 64, 0.1, 256)
    assert f"critical batch (B_simple at the peak learning rate): {b:.0f}." in out
    assert f"recommended: --global-batch {batch} --base-lr 0.1 (lr {lr:g}" in out
    assert json.loads((tmp_path / "n/config.json").read_text())["accumulation_steps"] == 4
