"""The `largebatch` command: tools that work on finished runs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError
from .metrics import read_metrics
from .plots import training_curves


def compare(run_dirs: list[str], plot: str) -> str:
    """Table of each run's batch, rate and final errors; writes the overlaid training curves to `plot`."""
    rows, labels = [], []
    for run in map(Path, run_dirs):
        if not (run / "metrics.jsonl").is_file() or not (run / "config.json").is_file():
            raise UserError(f"{run} is not a finished run folder (needs config.json and metrics.jsonl)")
        cfg = json.loads((run / "config.json").read_text())
        _, evals = read_metrics(run / "metrics.jsonl")
        if not evals:
            raise UserError(f"{run} has no evaluation yet")
        last = evals[-1]
        labels.append(f"B={cfg['global_batch']}")
        rows.append(f"{run.name:<28} {cfg['global_batch']:>6} {cfg['accumulation_steps']:>5} {cfg['peak_lr']:>7.3g} "
                    f"{cfg['warmup'] if cfg['warmup_steps'] else 'none':>8} {last['epoch']:>6.1f} "
                    f"{100 * last['train_error']:>8.2f} {100 * last['test_error']:>8.2f}")
    training_curves(list(map(Path, run_dirs)), labels, Path(plot))
    header = f"{'run':<28} {'B':>6} {'accum':>5} {'lr':>7} {'warmup':>8} {'epoch':>6} {'train %':>8} {'test %':>8}"
    return "\n".join([header, *rows, f"training curves: {plot}"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="largebatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="final errors of runs side by side, and their training curves in one plot")
    p.add_argument("runs", nargs="+", help="run folders (runs/<name>)")
    p.add_argument("--plot", default="runs/compare.png", help="where to write the figure")
    args = parser.parse_args(argv)
    try:
        print(compare(args.runs, args.plot))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
