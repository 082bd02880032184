"""Does the demo's verdict hold on seeds and machines it was not chosen on? (`make demo-check`)

    .venv/bin/python benchmarks/demo_check.py                      # all three instruction sets: hours on 2 cores
    .venv/bin/python benchmarks/demo_check.py --isa native --tally  # only read what has run

The demo's pair (recipes/sweeps/demo.yaml) is chosen on seeds 0-4 (records in docs/results/demo): the large
batch's mean must sit inside the band (the baseline's mean + 0.5 points, `largebatch compare`'s) with a margin
of at least 2 of its seed standard deviations. The check then trains recipes/sweeps/demo_check.yaml (8 other
seed pairs) under each instruction set this machine offers (a run's float order, and so its sample, depends on the
kernels: ATEN_CPU_CAPABILITY picks ATen's, ONEDNN_MAX_CPU_ISA oneDNN's), each into --out/<isa> (resumable:
a stopped check continues), and tallies the pairs whose large batch matched, by the rule `make demo` prints.
Each finished run's record (config, metrics, summary: no checkpoints) is kept in --results/check/<isa>, and the
tally reads those records, so a check spread over machines and sessions adds up in git rather than in one
runs/ folder. Writes check.md and check.json into --results, which `largebatch compare --seeds` quotes.
"""
import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from largebatch.tools.report import load_run, load_sweeps
from largebatch.training.runfolder import FINISHED

ROOT = Path(__file__).resolve().parent.parent
ISAS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
        "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}}
RECORD = ("config.json", "metrics.jsonl", "summary.json")  # what a report reads of a run; checkpoints stay out
BAND = 0.5  # points: `largebatch compare`'s default, the demo's verdict
PAIRS_WANTED, MATCHED_WANTED = 8, 7


def errors_by_batch(runs) -> dict[int, dict[int, float]]:
    """{global batch: {seed: final test error in %}} of the runs (report.Run); a diverged run's is infinite."""
    out: dict[int, dict[int, float]] = {}
    for run in runs:
        error = 100 * run.error if run.status == FINISHED else math.inf  # its evaluations predate the divergence
        out.setdefault(run.config["global_batch"], {})[run.config["seed"]] = error
    return out


def spread(errors: list[float]) -> dict:
    return dict(n=len(errors), mean=statistics.mean(errors), std=statistics.stdev(errors) if len(errors) > 1 else 0.0,
                min=min(errors), max=max(errors), values=errors)


def selection(runs_dir: Path) -> dict:
    """The chosen pair on its 5 seeds: each batch's spread, the band and the large batch's margin inside it."""
    by_batch = errors_by_batch(run for result in load_sweeps(runs_dir, ["demo"])
                               for group in result.groups for run in group.ok)
    if len(by_batch) != 2:
        sys.exit(f"error: {runs_dir}/demo holds finished runs of {len(by_batch)} batch sizes, not 2; run "
                 f"`largebatch sweep recipes/sweeps/demo.yaml --out {runs_dir}` first")
    small, large = sorted(by_batch)
    s, l = spread(list(by_batch[small].values())), spread(list(by_batch[large].values()))
    margin = s["mean"] + BAND - l["mean"]
    return dict(baseline=small, large=large, stats={small: s, large: l}, band=BAND, margin=margin,
                chosen=margin >= 2 * l["std"] and s["n"] >= 5 and l["n"] >= 5)


def tally(records: Path) -> dict:
    """Each seed pair's errors and verdict (large <= small + band) from the runs recorded in `records`, and how
    many matched (none recorded yet: 0)."""
    runs = (load_run(summary.parent) for summary in sorted(records.glob("*/summary.json")))
    by_batch = errors_by_batch(run for run in runs if not isinstance(run, str))
    if len(by_batch) < 2:
        return dict(pairs=0, matched=0, rows=[])
    small, large = sorted(by_batch)
    seeds = sorted(set(by_batch[small]) & set(by_batch[large]))
    rows = [dict(seed=s, small=by_batch[small][s], large=by_batch[large][s],
                 matched=by_batch[large][s] <= by_batch[small][s] + BAND) for s in seeds]
    return dict(pairs=len(rows), matched=sum(r["matched"] for r in rows), rows=rows)


def keep_records(sweep_dir: Path, records: Path) -> None:
    """Copy the record of each finished run of one instruction set's check (a reused run's target's) into
    `records`/<run>, where the tally reads it."""
    for summary in sorted(sweep_dir.glob("*/summary.json")):
        keep = records / summary.parent.name
        keep.mkdir(parents=True, exist_ok=True)
        for name in RECORD:
            shutil.copyfile(summary.parent / name, keep / name)


def run_isa(isa: str, out: Path, jobs: int) -> None:
    env = dict(os.environ, **ISAS[isa], TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "largebatch.tools.cli", "sweep", str(ROOT / "recipes/sweeps/demo_check.yaml"),
           "--out", str(out / isa), "--jobs", str(jobs)]
    print(f"{isa}: {' '.join(f'{k}={v}' for k, v in ISAS[isa].items()) or 'native kernels'}", flush=True)
    if subprocess.run(cmd, cwd=ROOT, env=env).returncode:
        sys.exit(f"error: the demo_check sweep under {isa} failed; rerun to resume it")


def to_markdown(sel: dict, checks: dict) -> str:
    b, l = sel["baseline"], sel["large"]
    seeds = sorted({r["seed"] for c in checks.values() for r in c["rows"]})  # one column each, any set's
    lines = [f"# The demo's verdict on other seeds and instruction sets", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
             f"torch kernels chosen by ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA.", "",
             f"## The choice (recipes/sweeps/demo.yaml, seeds 0-4)", "",
             "| B | seeds | test error % mean ± std | min–max | per seed |", "|---|---|---|---|---|"]
    for batch in (b, l):
        s = sel["stats"][batch]
        lines.append(f"| {batch} | {s['n']} | {s['mean']:.2f} ± {s['std']:.2f} | {s['min']:.2f}–{s['max']:.2f} | "
                     + ", ".join(f"{v:.2f}" for v in s["values"]) + " |")
    lines += ["", f"Band: B = {b}'s mean + {sel['band']} = {sel['stats'][b]['mean'] + sel['band']:.2f}%. B = {l}'s "
              f"margin inside it: {sel['margin']:.2f} points = {sel['margin'] / max(sel['stats'][l]['std'], 1e-9):.1f} "
              f"of its seed std (wanted: at least 2): **{'chosen' if sel['chosen'] else 'NOT good enough'}**.", "",
              f"## The check (recipes/sweeps/demo_check.yaml: {PAIRS_WANTED} other seed pairs)", "",
              "| " + " | ".join(["instruction set", "pairs", "matched"] + [f"seed {n}" for n in seeds]) + " |",
              "|---|---|---|" + "---|" * len(seeds)]
    for isa, c in checks.items():
        cell = {r["seed"]: f"{r['small']:.2f} / {r['large']:.2f} {'✓' if r['matched'] else '✗'}" for r in c["rows"]}
        row = [isa, str(c["pairs"]), str(c["matched"])] + [cell.get(n, "") for n in seeds]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Cells: B = {b} / B = {l} test error %, ✓ when B = {l} is within {BAND} points of B = {b}. "
              f"Wanted: {MATCHED_WANTED} or more of {PAIRS_WANTED} pairs matched under every instruction set."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="docs/results", help="the folder holding the demo sweep (demo/): the "
                   "committed records, or where `largebatch sweep recipes/sweeps/demo.yaml` wrote")
    p.add_argument("--out", default="runs/demo-check", help="the check's sweeps, one folder per instruction set")
    p.add_argument("--results", default="docs/results/demo",
                   help="where check.md, check.json and the runs' records (check/<isa>/) go")
    p.add_argument("--isa", nargs="+", choices=list(ISAS), default=list(ISAS))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--tally", action="store_true", help="train nothing: tally what has finished")
    args = p.parse_args()
    sel = selection(ROOT / args.runs)
    checks = {}
    for isa in args.isa:
        if not args.tally:
            run_isa(isa, ROOT / args.out, args.jobs)
        keep_records(ROOT / args.out / isa / "demo_check", ROOT / args.results / "check" / isa)
        checks[isa] = tally(ROOT / args.results / "check" / isa)
    results = ROOT / args.results
    results.mkdir(parents=True, exist_ok=True)
    (results / "check.json").write_text(json.dumps(dict(selection=sel, checks=checks, band=BAND), indent=2))
    text = to_markdown(sel, checks)
    (results / "check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
