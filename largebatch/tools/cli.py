"""The `largebatch` command (also `python -m largebatch`): tools that work on runs."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import Stopped, UserError, exit_with
from ..training.recipes import RECIPES
from . import figures, plan
from .compare import compare
from .dashboard import SWEEP_FILES, dashboard
from .export import export
from .noise import noise_run
from .prepare import prepare_imagenet
from .report import write_report
from .sweep import run_sweep


def plan_run(args) -> str:
    """The planner's table for the chosen algorithm and its figure for all three."""
    w, net = plan.load_calibration(args.calibration) if args.calibration else (plan.PAPER_WORKLOAD, plan.PAPER_NETWORK)
    if args.overlap is not None:
        if not 0 <= args.overlap <= 1:
            raise UserError(f"--overlap {args.overlap} must be between 0 and 1")
        w = dataclasses.replace(w, overlap=args.overlap)
    try:
        workers = [int(x) for x in args.workers.split(",")]
    except ValueError:
        raise UserError(f"--workers {args.workers!r} must be comma-separated whole numbers, e.g. 8,64,256") from None
    if not workers or min(workers) < 1:
        raise UserError(f"--workers {args.workers!r} must be positive")
    reference = min(workers) if args.calibration else 8
    out = figures.scaling({a: plan.table(w, net, workers, a, reference) for a in plan.ALGORITHMS}, Path(args.plot))
    return plan.render_table(w, net, workers, args.algorithm, reference) + f"\nplot (all three algorithms): {out}"


def sweep_run(args) -> str:
    failed = run_sweep(args.file, args.out, args.report_to, args.jobs or None, args.dry_run)
    if failed:
        raise UserError(f"{failed} run(s) failed; their errors are above (or in their train.log); "
                        f"rerun the same command to retry them")
    return ""


def report_run(args) -> str:
    return f"wrote {write_report(args.runs_dir, args.out, args.tolerance / 100, args.sweeps)} (and report.html)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="largebatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_result_commands(sub)
    _add_other_commands(sub)
    return parser


def _add_result_commands(sub) -> None:
    """The commands that run sweeps and read what runs wrote."""
    p = sub.add_parser("compare", help="final errors of runs side by side, and their training curves in one plot")
    p.add_argument("runs", nargs="+", help="run folders (runs/<name>)")
    p.add_argument("--plot", default="runs/compare.png", help="where to write the figure")
    p.add_argument("--band", type=float, default=0.5,
                   help="points of test error over the first run's within which a later run matches it")
    p.add_argument("--seeds", help="check.json of benchmarks/demo_check.py: quote the pair's seed spread")
    p.set_defaults(func=lambda a: compare(a.runs, a.plot, a.band, a.seeds))
    p = sub.add_parser("sweep", help="run a W&B grid sweep file here, one run after another (or one per GPU)")
    p.add_argument("file", help="sweep YAML, e.g. recipes/sweeps/batch_size.yaml")
    p.add_argument("--out", default="runs/sweeps", help="runs go to OUT/<sweep name>/<parameters>")
    p.add_argument("--report-to", default="none", choices=["none", "wandb"],
                   help="also log every run to W&B (offline without WANDB_API_KEY)")
    p.add_argument("--jobs", type=int, default=0, help="runs at a time (default: one per visible GPU, else 1)")
    p.add_argument("--dry-run", action="store_true", help="print each run's command and exit")
    p.set_defaults(func=sweep_run)
    p = sub.add_parser("report", help="report.md + report.html with figures from a folder of sweeps")
    p.add_argument("runs_dir", help="folder of sweep folders, e.g. runs/sweeps")
    p.add_argument("--out", help="where to write the report and figures (default: RUNS_DIR)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="percentage points a batch size may exceed the baseline's mean error by and still hold "
                        "(the band is the larger of this and 2 std of the baseline)")
    p.add_argument("--sweeps", nargs="+", metavar="NAME", help="only these sweeps of RUNS_DIR (default: all)")
    p.set_defaults(func=report_run)
    p = sub.add_parser("dashboard", help="the report's figures as W&B workspace views (and a W&B report), saved "
                                         "with your W&B key")
    p.add_argument("--entity", required=True, help="W&B entity (user or team) that owns the project")
    p.add_argument("--project", required=True, help="W&B project the runs log to (the recipes' default: largebatch)")
    p.add_argument("--sweep", nargs="+", default=[], metavar="ID",
                   help="only the runs of these W&B sweeps (the ids `wandb sweep` prints); default: every run "
                        "whose options match a sweep file, however it was launched")
    p.add_argument("--files", nargs="+", default=SWEEP_FILES, metavar="YAML",
                   help="sweep files to show, one view each (default: the Fashion-MNIST sweeps of make results)")
    p.add_argument("--report", action="store_true", help="also save one W&B report with every sweep's section")
    p.add_argument("--dry-run", action="store_true", help="print the views (and report) as JSON; nothing saved")
    p.set_defaults(func=lambda a: dashboard(a.entity, a.project, a.sweep, a.files, a.report, a.dry_run))


def _add_other_commands(sub) -> None:
    """The planner, export, the noise-scale run and the ImageNet copy."""
    p = sub.add_parser("plan", help="time per iteration, epoch and training run on W workers, from a network model")
    p.add_argument("--calibration", help="JSON from benchmarks/allreduce.py: this machine's measured costs "
                                         "(default: the paper's P100 servers and 50 Gbit/s Ethernet)")
    p.add_argument("--algorithm", default="hierarchical", choices=plan.ALGORITHMS)
    p.add_argument("--overlap", type=float, help="fraction of backprop the all-reduce can hide behind (default 1)")
    p.add_argument("--workers", default="8,16,32,64,128,256,512,1024", help="comma-separated W")
    p.add_argument("--plot", default="runs/plan.png", help="where to draw time to train and efficiency against W")
    p.set_defaults(func=plan_run)
    p = sub.add_parser("export", help="a run's trained weights as a plain timm state dict (.safetensors), "
                                      "ZeRO shards consolidated")
    p.add_argument("run_dir", help="the run folder (runs/<name>)")
    p.add_argument("out", help="the .safetensors file to write")
    p.set_defaults(func=lambda a: export(a.run_dir, a.out))
    p = sub.add_parser("noise", help="a short run at a small batch that measures the gradient noise scale and "
                                     "recommends a global batch and learning rate")
    p.add_argument("--recipe", default="fashion_mnist", choices=sorted(RECIPES), help="the recipe to run")
    p.add_argument("--global-batch", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=32, help="the small batch whose gradient is compared")
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--run-dir", default="runs/noise")
    p.add_argument("recipe_args", nargs="*", help="more recipe options, after --: -- --subset 10000")
    p.set_defaults(func=noise_run)
    p = sub.add_parser("prepare-imagenet", help="a resized copy of an ImageNet folder (shorter side <= 256) in "
                                                "Arrow shards, which runs read faster (--data-dir DST)")
    p.add_argument("src", help="ImageNet folder with train/<class>/*.JPEG and val/<class>/*.JPEG")
    p.add_argument("dst", help="where to write the copy (a killed copy resumes here)")
    p.add_argument("--short-side", type=int, default=256, help="shorter side of the stored images, at most")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored images")
    p.add_argument("--jobs", type=int, default=0, help="processes (default: one per CPU core)")
    p.set_defaults(func=lambda a: prepare_imagenet(a.src, a.dst, a.short_side, a.quality, a.jobs))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        out = args.func(args)
    except (UserError, Stopped) as e:
        exit_with(e)
    if out:
        print(out)


if __name__ == "__main__":
    main()
