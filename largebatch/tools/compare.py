"""`largebatch compare RUN...`: runs side by side against the first, the baseline, with a verdict on each:
did it land inside the band `largebatch report` uses (report.match_band) over the baseline's test error."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..training.metrics import final_error, read_metrics, read_summary
from ..training.runfolder import CONFIG, DIVERGED, EPOCH, FINISHED, METRICS, TRAIN_ERROR, RunFolder
from . import figures
from .report import match_band


def compare(run_dirs: list[str], plot: str, band: float = 0.5, seeds: str | None = None) -> str:
    """Table of each run's batch, rate and final errors, and a verdict on each run against the first (the
    baseline): inside the band of `band` points over its test error or not. The test error is the report's and
    demo_check.py's (`metrics.final_error`: the median of the last 1/18's evaluations), so the demo's verdict
    is the one its seed check tallies. Writes the overlaid training curves to `plot`. `seeds`: a check.json of benchmarks/demo_check.py, whose seed spread and tally of other
    seed pairs the last verdict line quotes (one seed pair is one sample)."""
    rows, labels, finals = [], [], []
    for run in map(RunFolder, run_dirs):
        if not run.started():
            raise UserError(f"{run.path} is not a finished run folder (needs {CONFIG} and {METRICS})")
        cfg = run.read_config()
        _, evals = read_metrics(run.metrics)
        if not evals:
            raise UserError(f"{run.path} has no evaluation yet")
        last, summary, test = evals[-1], read_summary(run.path), 100 * final_error(evals)
        unfinished = None if summary and summary.status == FINISHED else (
            DIVERGED if summary else f"not finished: epoch {last[EPOCH]:.1f} of {cfg['epochs']:g}")
        labels.append(f"B={cfg['global_batch']}")
        finals.append((cfg, test, unfinished))
        rows.append(f"{run.path.name:<28} {cfg['global_batch']:>6} {cfg['accumulation_steps']:>5} "
                    f"{cfg['peak_lr']:>7.3g} {cfg['warmup'] if cfg['warmup_steps'] else 'none':>8} {last[EPOCH]:>6.1f} "
                    f"{100 * last[TRAIN_ERROR]:>8.2f} {test:>8.2f}"
                    + (f"  ({unfinished})" if unfinished else ""))
    figures.training_curves(list(map(Path, run_dirs)), labels, Path(plot))
    header = f"{'run':<28} {'B':>6} {'accum':>5} {'lr':>7} {'warmup':>8} {'epoch':>6} {'train %':>8} {'test %':>8}"
    verdicts = _verdicts(finals, band)
    if seeds:
        verdicts[-1] += " | " + _seed_spread(seeds)
    return "\n".join([header, *rows, f"training curves: {plot}", *verdicts])


def _seed_spread(check_file: str) -> str:
    """The pair's spread over its 5 seeds and the tally of other seed pairs, from benchmarks/demo_check.py."""
    try:
        check = json.loads(Path(check_file).read_text())
        sel, stats = check["selection"], check["selection"]["stats"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--seeds {check_file} is not a check.json of benchmarks/demo_check.py ({e})") from None
    cells = [f"B = {b} {s['mean']:.2f} ± {s['std']:.2f} ({s['min']:.2f}–{s['max']:.2f})" for b, s in stats.items()]
    tallies = [f"{c['matched']}/{c['pairs']} {isa}" for isa, c in check["checks"].items() if c["pairs"]]
    return (f"over {min(s['n'] for s in stats.values())} seeds: " + ", ".join(cells)
            + (f"; other seed pairs matched {', '.join(tallies)}" if tallies
               else "; other seed pairs: not checked yet (make demo-check)"))


def _verdicts(finals: list[tuple[dict, float, str | None]], band: float) -> list[str]:
    """One line per run after the first: did it land within the report's band (`report.match_band`: one
    baseline run, so `band` points) of the first run's test error? None for a run that did not finish (its
    error is not the run's), nor against a baseline that did not."""
    (base, base_error, base_unfinished), lines = finals[0], []
    if base_unfinished:
        return [f"no verdicts: the baseline B = {base['global_batch']} is {base_unfinished}; finish it with --resume"]
    for cfg, error, unfinished in finals[1:]:
        if unfinished:
            lines.append(f"B = {cfg['global_batch']}: no verdict, the run is {unfinished}"
                         + ("" if unfinished == DIVERGED else "; finish it with --resume"))
            continue
        k, limit = cfg["global_batch"] / base["global_batch"], base_error + match_band([base_error], band)
        lines.append(f"B = {cfg['global_batch']} ({k:g}x the baseline, {cfg['accumulation_steps']} accumulation "
                     f"steps of {cfg['micro_batch_used']}): {error:.2f}% test error against {base_error:.2f}% at "
                     f"B = {base['global_batch']}, " + (f"inside the band ({limit:.2f}%): the large batch matched"
                                                        if error <= limit else
                                                        f"outside the band ({limit:.2f}%): it did NOT match"))
    return lines
