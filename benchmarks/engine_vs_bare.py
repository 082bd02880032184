"""Images/s of a bare PyTorch training loop against the largebatch engine: same timm model, same data
and augmentation, same micro-batch, accumulation and processes.

    .venv/bin/python benchmarks/engine_vs_bare.py --accumulation 8 --bn ghost
    .venv/bin/accelerate launch --config_file accelerate_configs/cpu_2proc.yaml --num_processes 2 \\
        benchmarks/engine_vs_bare.py --accumulation 8 --bn ghost

One launch measures one case: the bare loop (torch DDP with no_sync during accumulation, plain SGD),
then the engine through `train()` in the same processes; prints one JSON line. `make bench` runs
every case and writes the table (benchmarks/run.py).
"""
import argparse
import contextlib
import dataclasses
import json
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from largebatch import engine, metrics
from largebatch.config import Config
from largebatch.datasets import load_fashion_mnist
from largebatch.models import build_model


def bare(cfg: Config, data, steps: int, warmup: int) -> float:
    """Seconds per optimizer step of the hand-written loop, after `warmup` steps."""
    W, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    micro, A = cfg.split(W)
    model = build_model(cfg, data.num_classes, data.in_chans).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model) if W > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    order = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(0))
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        for a in range(A):
            first = ((step * A + a) * W + rank) * micro % (data.num_train - micro)
            x, y = data.train_batch(order[first:first + micro], seed=0, epoch=0)
            sync = a == A - 1 or W == 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                (F.cross_entropy(ddp(x), y) / A).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def through_engine(cfg: Config, data, steps: int, warmup: int) -> float:
    """Seconds per optimizer step of `engine.train`, timed at each step's metrics row."""
    stamps = []
    log = metrics.MetricsLog.log

    def timed(self, row, step):
        log(self, row, step)
        if "loss" in row:
            stamps.append(time.perf_counter())

    metrics.MetricsLog.log = timed
    with tempfile.TemporaryDirectory() as tmp:
        # One epoch of exactly warmup + steps steps; evaluation and the checkpoint come after the last one.
        run = dataclasses.replace(cfg, subset=(warmup + steps) * cfg.global_batch, epochs=1, eval_every=10,
                                  checkpoint_every=10 ** 9, run_dir=os.path.join(tmp, "run"))
        engine.train(run, data, build_model(cfg, data.num_classes, data.in_chans), "bench")
    return (stamps[-1] - stamps[warmup - 1]) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--micro-batch", type=int, default=128)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--bn", default="ghost", choices=["ghost", "micro"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    W = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = Config(model="resnet_fmnist", micro_batch=args.micro_batch, bn=args.bn, bn_batch=32,
                 global_batch=args.micro_batch * W * args.accumulation, warmup="none", seed=0).validate()
    os.environ["TQDM_DISABLE"] = "1"
    data = load_fashion_mnist()
    if W > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // W))
        engine._init_gloo_for_this_attempt()  # the bare loop's process group; the engine keeps it
    step_bare = bare(cfg, data, args.steps, args.warmup)
    step_engine = through_engine(cfg, data, args.steps, args.warmup)  # tears the process group down at the end
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(dict(processes=W, micro_batch=args.micro_batch, accumulation=args.accumulation, bn=args.bn,
                              bare=cfg.global_batch / step_bare, engine=cfg.global_batch / step_engine)), flush=True)


if __name__ == "__main__":
    main()
