"""`make bench`: every engine-vs-bare case on 1 and 2 CPU processes, and the all-reduce calibration.

    .venv/bin/python benchmarks/run.py --out runs/bench          # about 15 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --out runs/bench --tiny   # a smoke run (CI)

Writes results.json, tables.md and calibration.json (for `largebatch plan --calibration`) in --out.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def launch(script: str, args: list[str], processes: int) -> dict:
    """Run a benchmark script on `processes` CPU processes; its last stdout line is JSON."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    if processes == 1:
        cmd = [sys.executable, str(HERE / script)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs/cpu_2proc.yaml"), "--num_processes", str(processes),
               "--main_process_port", str(port), str(HERE / script)]
    proc = subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: {script} {' '.join(args)} on {processes} processes failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tables(cases: list[dict], comm: dict) -> str:
    # The headline ratio pairs each engine step with the bare step next to it (the median of those
    # ratios); the ratio of the two median steps, an unpaired estimate, is shown beside it.
    lines = ["| processes | accumulation | BN | steps | bare loop img/s | engine img/s | engine / bare, paired "
             "(quartiles) | engine / bare, unpaired | engine's extra ms per step |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        q1, q2, q3 = c["ratio_quartiles"]
        lines.append(f"| {c['processes']} | {c['accumulation']} | {c['bn']} | {c['steps']} | {c['bare']:.0f} | "
                     f"{c['engine']:.0f} | **{q2:.3f}** ({q1:.3f}-{q3:.3f}) | {c['engine'] / c['bare']:.3f} | "
                     f"{c['overhead_ms']:.1f} |")
    lines += ["", f"gloo all-reduce on {comm['processes']} processes: α = {comm['latency_us']:.0f} µs, "
                  f"{comm['bandwidth_MBps']:.0f} MB/s (fit over {len(comm['allreduce'])} sizes)", "",
              "| bytes | all-reduce ms |", "|---|---|"]
    lines += [f"| {a['bytes']:,} | {a['ms']:.2f} |" for a in comm["allreduce"]]
    lines += ["", "| model | parameters | step with all-reduce ms | without (no_sync) ms | all-reduce alone ms | "
                  "exposed ms | hidden |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {m['model']} | {m['params']:,} | {m['step_ms']:.1f} | {m['no_comm_ms']:.1f} | {m['allreduce_ms']:.1f} "
              f"| {m['exposed_ms']:.1f} | {100 * m['hidden']:.0f}% |" for m in comm["models"]]
    p = comm["plan"]
    lines += ["", f"`largebatch plan` calibrated on these numbers predicts {p['predicted_step_ms']:.1f} ms per "
                  f"{p['model']} step on {comm['processes']} processes; measured {p['measured_step_ms']:.1f} ms."]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--tiny", action="store_true", help="one short case per process count (a smoke run)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Timed steps per case: 10-40 s of each loop (at accumulation 8 on 2 processes an epoch holds 27).
    steps = {1: 100, 8: 50} if not args.tiny else {1: 2}
    grid = [(1, "ghost")] if args.tiny else [(1, "ghost"), (1, "micro"), (8, "ghost"), (8, "micro")]
    cases, start = [], time.time()
    for processes in (1, 2):
        for accumulation, bn in grid:
            cases.append(launch("engine_vs_bare.py", ["--steps", str(steps[accumulation]), "--warmup", "2",
                                                      "--accumulation", str(accumulation), "--bn", bn], processes))
            c = cases[-1]
            print(f"{processes} process(es), accumulation {accumulation}, BN {bn}: bare {c['bare']:.0f} img/s, "
                  f"engine {c['engine']:.0f} img/s, engine/bare {c['ratio_quartiles'][1]:.3f} paired "
                  f"[{time.time() - start:.0f} s]",
                  flush=True)
    comm_args = ["--out", str(out / "calibration.json")]
    comm_args += ["--repeats", "1", "--max-mb", "0.1", "--models", "resnet_fmnist"] if args.tiny else []
    comm = launch("allreduce.py", comm_args, 2)
    (out / "results.json").write_text(json.dumps(dict(cases=cases, allreduce=comm), indent=2))
    (out / "tables.md").write_text(tables(cases, comm))
    print(tables(cases, comm))


if __name__ == "__main__":
    main()
