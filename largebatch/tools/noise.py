"""`largebatch noise RECIPE`: a short run at a small batch with accumulation, and the critical batch its
gradient noise scale recommends (training/noise.py)."""
from __future__ import annotations

from ..errors import UserError
from ..training import noise
from ..training.metrics import read_metrics
from ..training.recipes import run_recipe
from ..training.runfolder import EPOCH, GRAD_SQ, GRAD_VAR, LOSS, NOISE_SCALE, RunFolder


def noise_run(args) -> str:
    """Train the recipe at a small batch with accumulation, then read its noise scale off metrics.jsonl."""
    if args.global_batch % args.micro_batch or args.global_batch == args.micro_batch:
        raise UserError(f"--global-batch {args.global_batch} must be a multiple of --micro-batch {args.micro_batch} "
                        f"(at least 2x): the noise scale compares the micro-batch's gradient with the batch's")
    run_recipe(args.recipe, [f"--global-batch={args.global_batch}", f"--micro-batch={args.micro_batch}",
                             f"--epochs={args.epochs:g}", f"--warmup-epochs={args.epochs / 4:g}",
                             f"--run-dir={args.run_dir}", "--resume", *args.recipe_args])
    run = RunFolder(args.run_dir)
    steps, _ = read_metrics(run.metrics)
    cfg = run.read_config()
    b_crit, rows = noise.critical_batch(steps)
    if not rows:
        raise UserError(f"{args.run_dir} logged no noise scale (it needs gradient accumulation)")
    batch, lr = noise.recommend(b_crit, args.micro_batch, cfg["base_lr"], cfg["base_batch"])
    lines = [f"{'epoch':>6} {'loss':>7} {'tr(Σ)':>10} {'|G|²':>10} {'B_simple':>9}"]
    lines += [f"{r[EPOCH]:>6.2f} {r[LOSS]:>7.3f} {r[GRAD_VAR]:>10.4g} {r[GRAD_SQ]:>10.4g} {r[NOISE_SCALE]:>9.0f}"
              for r in rows]
    lines += [f"critical batch (B_simple at the peak learning rate): {b_crit:.0f}. It grows as the loss falls, "
              f"so a longer run's is larger.",
              f"recommended: --global-batch {batch} --base-lr {cfg['base_lr']:g} (lr {lr:g} by linear scaling) with "
              f"gradual warmup; past about {b_crit:.0f} a larger batch stops cutting the number of steps"]
    return "\n".join(lines)
