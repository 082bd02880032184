"""Training throughput (images/s) of a model on this machine: augmentation, forward, backward, SGD step.

    .venv/bin/python benchmarks/throughput.py --model resnet_fmnist --micro-batch 256 --bn ghost micro

One process, no Accelerate: the ceiling the engine's throughput is measured against.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from largebatch.config import Config
from largebatch.datasets import load_fashion_mnist
from largebatch.models import build_model
from largebatch.optim import build_optimizer


def measure(cfg: Config, data, steps: int, warmup: int = 3) -> float:
    model = build_model(cfg, data.num_classes, data.in_chans).train()
    opt = build_optimizer(cfg, model, lr=0.1)
    order = torch.randperm(data.num_train)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        idx = order[i * cfg.micro_batch:(i + 1) * cfg.micro_batch]
        x, y = data.train_batch(idx, seed=0, epoch=0)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * cfg.micro_batch / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet_fmnist")
    p.add_argument("--micro-batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--bn", nargs="+", default=["ghost", "micro"], choices=["ghost", "micro"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist()
    print(f"{args.model} on {args.threads} CPU threads, {args.steps} steps each")
    print(f"{'micro-batch':>11} {'bn':>6} {'images/s':>9}")
    for b in args.micro_batch:
        for bn in args.bn:
            cfg = Config(model=args.model, micro_batch=b, bn=bn, bn_batch=min(32, b))
            print(f"{b:>11} {bn:>6} {measure(cfg, data, args.steps):>9.0f}", flush=True)


if __name__ == "__main__":
    main()
