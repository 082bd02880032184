"""What gradient all-reduce costs on this machine's processes (gloo), and how much of it DDP hides.

    .venv/bin/accelerate launch --config_file accelerate_configs/cpu_2proc.yaml --num_processes 2 \\
        benchmarks/allreduce.py --out runs/bench/calibration.json

1. all_reduce of 4 KB to 64 MB: a least-squares fit of t = α + bytes / bandwidth.
2. For each model: one training step (micro-batch, forward + backward) with DDP's all-reduce and
   without it (no_sync), and the all-reduce of its gradient alone: hidden = 1 - (with - without) / alone.
3. Forward and backward times of the first model: with 1 and 2 the calibration `largebatch plan
   --calibration` reads; printed with the planner's prediction of the 2-process step, to compare.
"""
import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from largebatch.tools import plan
from largebatch.training.config import Config
from largebatch.training.launch import init_gloo_for_this_attempt
from largebatch.training.models import build_model


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls, the ranks lined up before each."""
    times = []
    for _ in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def fit_alpha_beta(sizes, seconds):
    """Least squares t = a + b·size: (latency a, bandwidth 1/b)."""
    n, mx, my = len(sizes), statistics.mean(sizes), statistics.mean(seconds)
    b = sum((x - mx) * (y - my) for x, y in zip(sizes, seconds)) / sum((x - mx) ** 2 for x in sizes)
    if b <= 0:  # noise swamped the sizes' difference: bound the bandwidth by the largest transfer
        return min(seconds), sizes[-1] / seconds[-1]
    return max(my - b * mx, 0.0), 1 / b


def step_times(model_name: str, micro: int, repeats: int):
    """(step with all-reduce, step without, all-reduce alone, forward, backward, parameters, buffers)."""
    cfg = Config(model=model_name, micro_batch=micro, bn="micro")
    model = build_model(cfg, 10, 1).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x, y = torch.randn(micro, 1, 28, 28), torch.randint(0, 10, (micro,))

    def step():
        F.cross_entropy(ddp(x), y).backward()

    def local():
        with ddp.no_sync():
            step()

    grads = [torch.zeros_like(p) for p in model.parameters()]
    flat = torch.cat([g.flatten() for g in grads])
    with_comm, without = timed(step, repeats), timed(local, repeats)
    alone = timed(lambda: dist.all_reduce(flat), repeats)
    out = {}

    def forward():
        out["loss"] = F.cross_entropy(model(x), y)

    fwd = timed(forward, repeats)
    bwd = []  # backward alone (a difference of two noisy timings can come out negative)
    for _ in range(repeats + 1):
        forward()
        dist.barrier()
        start = time.perf_counter()
        out["loss"].backward()
        bwd.append(time.perf_counter() - start)
    bwd = statistics.median(bwd[1:])
    params = sum(p.numel() for p in model.parameters())
    buckets = math.ceil(4 * params / (25 * 2 ** 20))  # DDP's default 25 MB buckets
    return with_comm, without, alone, fwd, bwd, params, buckets


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet_fmnist", "resnet18_cifar"])
    p.add_argument("--micro-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-mb", type=float, default=64)
    p.add_argument("--out", default="runs/bench/calibration.json")
    args = p.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1"))))
    init_gloo_for_this_attempt()
    W, rank = dist.get_world_size(), dist.get_rank()
    sizes = [4 * 4 ** k for k in range(5, 20) if 4 * 4 ** k <= args.max_mb * 2 ** 20]  # 4 KB, 16 KB, ...
    seconds = [timed(lambda n=n: dist.all_reduce(torch.ones(n // 4)), args.repeats) for n in sizes]
    latency, bandwidth = fit_alpha_beta(sizes, seconds)
    models = {m: step_times(m, args.micro_batch, args.repeats) for m in args.models}
    if rank == 0:
        with_c, without, alone, fwd, bwd, params, buckets = models[args.models[0]]
        calibration = dict(params=params, forward=fwd, backward=bwd, per_worker=args.micro_batch, buffers=buckets,
                           dataset=60000, epochs=12, latency=latency, bandwidth=bandwidth, workers=W)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(calibration, indent=2))
        w, net = plan.load_calibration(args.out)
        predicted = plan.iteration(w, W, net, "ring")["iteration"]
        print(json.dumps(dict(
            processes=W, latency_us=1e6 * latency, bandwidth_MBps=bandwidth / 1e6,
            allreduce=[dict(bytes=n, ms=1e3 * s) for n, s in zip(sizes, seconds)],
            models=[dict(model=m, params=v[5], step_ms=1e3 * v[0], no_comm_ms=1e3 * v[1], allreduce_ms=1e3 * v[2],
                         exposed_ms=1e3 * (v[0] - v[1]), hidden=1 - (v[0] - v[1]) / v[2])
                    for m, v in models.items()],
            plan=dict(model=args.models[0], measured_step_ms=1e3 * with_c, predicted_step_ms=1e3 * predicted))),
            flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
