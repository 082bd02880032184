"""Every figure the tools draw: training curves, error against batch size, and the planner's scaling.

The functions take plain numbers (percentages, epochs, labels), not the report's or the planner's
objects, so this module depends on nothing but matplotlib and the metrics reader.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from ..training.metrics import read_metrics  # noqa: E402
from ..training.runfolder import EPOCH, LOSS, TEST_ERROR, TRAIN_ERROR, RunFolder  # noqa: E402


def training_curves(run_dirs: list[Path], labels: list[str], out: Path) -> Path:
    """Training loss per step and train/test error per evaluation, against epochs, runs overlaid."""
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    for run, label in zip(run_dirs, labels):
        steps, evals = read_metrics(RunFolder(run).metrics)
        line, = ax_loss.plot([r[EPOCH] for r in steps], [r[LOSS] for r in steps], lw=0.8, label=label)
        epochs = [r[EPOCH] for r in evals]
        ax_err.plot(epochs, [100 * r[TRAIN_ERROR] for r in evals], "--", color=line.get_color(),
                    label=f"{label} train")
        ax_err.plot(epochs, [100 * r[TEST_ERROR] for r in evals], "-o", ms=3, color=line.get_color(),
                    label=f"{label} test")
    ax_loss.set(xlabel="epoch", ylabel="training loss (mean over the global batch)", yscale="log")
    ax_err.set(xlabel="epoch", ylabel="error %", yscale="log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax in (ax_loss, ax_err):
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return save(fig, out)


def save(fig, out: Path, dpi: int = 110) -> Path:
    """Write a finished figure to `out` (making its folder) and free it."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def error_vs_batch(batches: list[int], ticks: list[str], errors: list[float | None], stds: list[float],
                   baseline: tuple[str, float, float] | None, out: Path) -> Path:
    """Test error % (mean ± std over seeds; None where every seed diverged) against the global batch on a
    log2 axis, over the baseline's band `baseline` = (label, mean %, band %)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if baseline is not None:
        label, mean, band = baseline
        # One-sided, as the verdict: a batch holds when its mean is at most the baseline's plus the band.
        ax.axhspan(mean, mean + band, color="0.85", label=f"{label} + band: holds up to its top")
        ax.axhline(mean, color="0.4", lw=0.8)
    ok = [i for i, e in enumerate(errors) if e is not None]
    ax.errorbar([batches[i] for i in ok], [errors[i] for i in ok], yerr=[stds[i] for i in ok], fmt="-o",
                capsize=3, label="test error, mean ± std over seeds")
    dead = [b for b, e in zip(batches, errors) if e is None]
    if dead:
        top = max([errors[i] for i in ok] or [1])
        ax.plot(dead, [top * 1.1] * len(dead), "rx", ms=9, label="diverged")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels(ticks)
    ax.set(xlabel="global minibatch size kn", ylabel="test error %", title="error vs minibatch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out)


def curves_over_baseline(panels: list[tuple[str, list[float], list[float]]],
                         baseline: tuple[str, list[float], list[float]] | None, out: Path) -> Path:
    """One panel per (title, epochs, training error %), each laid over the baseline's curve (the paper's
    Figures 2 and 4)."""
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.7 * rows), sharey=True, squeeze=False)
    for ax, (title, epochs, errors) in zip(axes.flat, panels):
        if baseline is not None:
            ax.plot(baseline[1], baseline[2], color="0.3", label=baseline[0])
        ax.plot(epochs, errors, color="C3", label=title)
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("training error %")
    return save(fig, out)


def scaling(rows_by_algorithm: dict[str, list[dict]], out: Path) -> Path:
    """The planner's time to train and scaling efficiency against the number of workers, per algorithm."""
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, rows in rows_by_algorithm.items():
        ws = [r["workers"] for r in rows]
        ax_t.plot(ws, [r["train"] / 3600 for r in rows], "-o", ms=3, label=name)
        ax_e.plot(ws, [100 * r["efficiency"] for r in rows], "-o", ms=3, label=name)
    ax_t.set(xscale="log", yscale="log", xlabel="workers W", ylabel="time to train (hours)")
    ax_e.set(xscale="log", xlabel="workers W", ylabel="scaling efficiency % (vs 8 workers)", ylim=(0, 105))
    for ax in (ax_t, ax_e):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return save(fig, out)


def steps_vs_batch(batches: list[int], ticks: list[str], steps: list[tuple[float, int, int] | None],
                   perfect: list[float] | None, target: str, out: Path) -> Path:
    """Optimizer steps to reach `target` (geometric mean over seeds, bars from the fewest to the most; None
    where no seed reached it) against the global batch on log-log axes, with the `perfect`-scaling line."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if perfect is not None:
        ax.plot(batches, perfect, "--", color="0.5", label="perfect scaling (steps halve as B doubles)")
    ok = [i for i, s in enumerate(steps) if s is not None]
    means = [steps[i][0] for i in ok]
    ax.errorbar([batches[i] for i in ok], means,
                yerr=[[max(0, m - steps[i][1]) for m, i in zip(means, ok)],  # the geometric mean of equal
                      [max(0, steps[i][2] - m) for m, i in zip(means, ok)]],  # values can round past them
                fmt="-o", capsize=3, label="steps to the target (mean and min-max over seeds)")
    never = [b for b, s in zip(batches, steps) if s is None]
    if never:
        ax.plot(never, [1.5 * max(means or [1])] * len(never), "rx", ms=9, label="never reached")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batches)
    ax.set_xticklabels(ticks)
    ax.set(xlabel="global minibatch size kn", ylabel="optimizer steps", title=f"steps to reach {target}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, out)
