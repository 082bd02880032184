"""`make bench`: every engine-vs-bare case on 1 and 2 CPU processes, the speed options, and the all-reduce calibration.

    .venv/bin/python benchmarks/run.py --out runs/bench          # about 30 minutes on 2 cores (compiling: 2 min a loop)
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


# The speed options on the recipe's step (1 process, micro-batch 256, accumulation 1, ghost BN); eager NCHW
# is the engine before them.
OPTIONS = {"NCHW, eager": ["--channels-last", "false"], "channels-last, eager": ["--channels-last", "true"],
           "NCHW, compiled": ["--channels-last", "false", "--compile"],
           "channels-last, compiled": ["--channels-last", "true", "--compile"]}


def options_table(options: dict) -> str:
    # Every engine is measured against the same yardstick, a bare eager NCHW loop interleaved with it, so an
    # option's gain over the eager NCHW engine is the ratio of two paired ratios; then against a bare loop
    # with the same options, the engine's own overhead.
    today = options["NCHW, eager"]["yardstick"]["ratio_quartiles"][1]
    lines = ["| options | engine img/s | engine / bare NCHW eager, paired (quartiles) | engine / engine NCHW eager | "
             "bare, same options, img/s | engine / bare, same options, paired (quartiles) |", "|---|---|---|---|---|---|"]
    for name, o in options.items():
        y, same = o["yardstick"], o["same"]
        (a1, a2, a3), (b1, b2, b3) = y["ratio_quartiles"], same["ratio_quartiles"]
        lines.append(f"| {name} | {y['engine']:.0f} | {a2:.3f} ({a1:.3f}-{a3:.3f}) | **{a2 / today:.2f}x** | "
                     f"{same['bare']:.0f} | **{b2:.3f}** ({b1:.3f}-{b3:.3f}) |")
    return "\n".join(lines) + "\n"


def speed_options(tiny: bool) -> dict:
    """Each option's engine against the bare eager NCHW loop and against a bare loop with the same options."""
    names = ["NCHW, eager", "channels-last, eager"] if tiny else list(OPTIONS)
    common = ["--micro-batch", "256", "--bn", "ghost", "--steps", "2" if tiny else "60", "--warmup", "3"]
    results = {}
    for name in names:
        yardstick = launch("engine_vs_bare.py", common + OPTIONS[name] + ["--bare", "nchw-eager"], 1)
        same = yardstick if name == "NCHW, eager" else launch("engine_vs_bare.py", common + OPTIONS[name], 1)
        results[name] = dict(yardstick=yardstick, same=same)
        print(f"{name}: engine {yardstick['engine']:.0f} img/s, {yardstick['ratio_quartiles'][1]:.3f} of a bare NCHW "
              f"eager loop; {same['ratio_quartiles'][1]:.3f} of a bare loop with the same options", flush=True)
    return results


def tables(cases: list[dict], comm: dict) -> str:
    # The headline ratio pairs each engine step with the bare step next to it (the median of those
    # ratios); the ratio of the two median steps, an unpaired estimate, is shown beside it.
    lines = ["The engine's defaults (channels-last, eager) on both loops, micro-batch 128.", "",
             "| processes | accumulation | BN | steps | bare loop img/s | engine img/s | engine / bare, paired "
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
    options = speed_options(args.tiny)
    comm_args = ["--out", str(out / "calibration.json")]
    comm_args += ["--repeats", "1", "--max-mb", "0.1", "--models", "resnet_fmnist"] if args.tiny else []
    comm = launch("allreduce.py", comm_args, 2)
    (out / "results.json").write_text(json.dumps(dict(cases=cases, options=options, allreduce=comm), indent=2))
    text = tables(cases, comm) + "\n" + options_table(options)
    (out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
