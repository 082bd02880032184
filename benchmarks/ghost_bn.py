"""Ghost BatchNorm (groups of n) against plain BatchNorm over the micro-batch: training images/s of the
same model, forward + backward + SGD step, interleaved step by step so both see the same machine.

    .venv/bin/python benchmarks/ghost_bn.py                      # resnet_fmnist and resnet50 (32x32), CPU
    .venv/bin/python benchmarks/ghost_bn.py --device cuda --dtype bf16 --size 224 --models resnet50

Each model is built twice from the same seed, once with every BatchNorm2d as ghost BN over groups of
--bn-batch and once plain; one step of each alternates, and the headline is the median of the per-pair
ratios ghost/plain in images/s (a shared machine's speed drifts by ±15% over seconds: pairs cancel it).
Prints a Markdown table row per model and, last, one JSON line with everything.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from largebatch.training.config import Config
from largebatch.training.models import build_model

SHAPES = {"resnet_fmnist": (1, 28), "resnet50": (3, 32)}  # (channels, default image size)


def _step(model, optimizer, x, y, dtype, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, args) -> dict:
    chans, size = SHAPES[name][0], args.size or SHAPES[name][1]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    runs = {}
    for bn in ("micro", "ghost"):
        model = build_model(Config(model=name, bn=bn, bn_batch=args.bn_batch), 1000 if name == "resnet50" else 10,
                            chans).to(args.device, memory_format=fmt).train()
        runs[bn] = (model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    x = torch.randn(args.micro_batch, chans, size, size, device=args.device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.micro_batch,), device=args.device)
    times = {bn: [] for bn in runs}
    for i in range(args.warmup + args.steps):
        for bn, (model, opt) in runs.items():
            t = _step(model, opt, x, y, dtype, args.device)
            if i >= args.warmup:
                times[bn].append(t)
    ratios = sorted(p / g for p, g in zip(times["micro"], times["ghost"]))  # ghost img/s over plain img/s
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return dict(model=name, size=size, micro_batch=args.micro_batch, bn_batch=args.bn_batch, dtype=args.dtype,
                channels_last=args.channels_last, device=_device_name(args.device), steps=args.steps,
                plain=args.micro_batch / statistics.median(times["micro"]),
                ghost=args.micro_batch / statistics.median(times["ghost"]), ratio=statistics.median(ratios),
                ratio_quartiles=(q[0], q[2]))


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--micro-batch", type=int, default=256)
    p.add_argument("--bn-batch", type=int, default=32)
    p.add_argument("--size", type=int, default=0, help="image size (default: 28 for resnet_fmnist, 32 for resnet50)")
    p.add_argument("--steps", type=int, default=30, help="timed pairs of steps per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: under autocast")
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    print("| model | image | micro-batch | n | dtype | layout | device | plain img/s | ghost img/s | "
          "ghost / plain, paired (quartiles) |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models:
        r = measure(name, args)
        rows.append(r)
        print(f"| {name} | {r['size']}² | {r['micro_batch']} | {r['bn_batch']} | {r['dtype']} | "
              f"{'channels-last' if r['channels_last'] else 'NCHW'} | {r['device']} | {r['plain']:.0f} | "
              f"{r['ghost']:.0f} | **{r['ratio']:.3f}** ({r['ratio_quartiles'][0]:.3f}-{r['ratio_quartiles'][1]:.3f}) |",
              flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
