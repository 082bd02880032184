"""Figures of finished runs, drawn from their metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .metrics import read_metrics  # noqa: E402


def training_curves(run_dirs: list[Path], labels: list[str], out: Path) -> Path:
    """Training loss per step and train/test error per evaluation, against epochs, runs overlaid."""
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    for run, label in zip(run_dirs, labels):
        steps, evals = read_metrics(Path(run) / "metrics.jsonl")
        line, = ax_loss.plot([r["epoch"] for r in steps], [r["loss"] for r in steps], lw=0.8, label=label)
        epochs = [r["epoch"] for r in evals]
        ax_err.plot(epochs, [100 * r["train_error"] for r in evals], "--", color=line.get_color(),
                    label=f"{label} train")
        ax_err.plot(epochs, [100 * r["test_error"] for r in evals], "-o", ms=3, color=line.get_color(),
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
