"""Images/s of a bare PyTorch training loop against the largebatch engine: same timm model, same data
and augmentation, same micro-batch, accumulation and processes.

    .venv/bin/python benchmarks/engine_vs_bare.py --accumulation 8 --bn ghost
    .venv/bin/accelerate launch --config_file accelerate_configs/cpu_2proc.yaml --num_processes 2 \\
        benchmarks/engine_vs_bare.py --accumulation 8 --bn ghost

Both loops take the speed options (`--channels-last`, `--compile`); with `--bare nchw-eager` the bare loop
keeps the eager NCHW step the engine had before those options, so one run measures an option's gain and the
engine's overhead together against a fixed yardstick.

The two run interleaved, step by step, in the same processes: `engine.train` trains, and after each of
its optimizer steps (its `on_step` callback, at the step's metrics row, which the engine writes once the
next step is taken) the bare loop takes one optimizer step of its own.
Each engine step is timed from the end of the bare step before it, so it includes all the engine's
per-step work (rate, data, reductions, checks, logging, progress bar). A shared machine's speed drifts
by ±15% over seconds; interleaving makes both loops see the same drift, so their ratio is steady where
separate runs of each are not. Prints one JSON line: images/s of each (median step), the quartiles
of the per-step ratios engine/bare, and the median extra time of an engine step in ms. `make bench` runs every case and writes the table (benchmarks/run.py).
"""
import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from largebatch.training import engine
from largebatch.training.config import Config
from largebatch.training.data import load_fashion_mnist
from largebatch.training.launch import init_gloo_for_this_attempt
from largebatch.training.models import build_model, memory_format


class BareLoop:
    """The hand-written loop: torch DDP (no_sync while accumulating) and torch.optim.SGD, one optimizer
    step per call, on the same micro-batches the engine would draw; model and batches in the config's
    memory format, the (DDP-wrapped) model compiled with cfg.compile, as Accelerate does."""

    def __init__(self, cfg: Config, data):
        self.W, self.rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
        self.micro, self.A = cfg.split(self.W)
        self.data, self.step_count, self.memory_format = data, 0, memory_format(cfg)
        self.model = build_model(cfg, data.num_classes, data.in_chans).train()
        ddp = torch.nn.parallel.DistributedDataParallel(self.model) if self.W > 1 else self.model
        self.ddp = torch.compile(ddp) if cfg.compile else ddp
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.base_lr, momentum=0.9, weight_decay=1e-4)
        self.order = torch.randperm(data.num_train, generator=torch.Generator().manual_seed(0))

    def step(self) -> None:
        micro, A, W = self.micro, self.A, self.W
        for a in range(A):
            first = ((self.step_count * A + a) * W + self.rank) * micro % (self.data.num_train - micro)
            x, y = self.data.train_batch(self.order[first:first + micro], seed=0, epoch=0)
            x = x.to(memory_format=self.memory_format)
            with contextlib.nullcontext() if a == A - 1 or W == 1 else self.ddp.no_sync():
                (F.cross_entropy(self.ddp(x), y) / A).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1


def interleaved(cfg: Config, data, steps: int, warmup: int, bare_cfg: Config | None = None,
                bare_loop: type = BareLoop) -> tuple[list[float], list[float]]:
    """Seconds per optimizer step (bare, engine), `steps` of each after `warmup` untimed pairs; the bare
    loop is `bare_loop(bare_cfg or cfg, data)`."""
    bare, bare_s, engine_s, last = bare_loop(bare_cfg or cfg, data), [], [], [0.0]

    def bare_step(step, row):  # right after the engine's step row
        mid = time.perf_counter()
        bare.step()
        end = time.perf_counter()
        if step >= warmup:
            engine_s.append(mid - last[0])
            bare_s.append(end - mid)
        last[0] = end

    with tempfile.TemporaryDirectory() as tmp:
        # One epoch of exactly warmup + steps steps; its evaluation and checkpoint come after the last.
        run = dataclasses.replace(cfg, subset=(warmup + steps) * cfg.global_batch, epochs=1,
                                  checkpoint_every=10 ** 9, run_dir=os.path.join(tmp, "run"))
        engine.train(run, data, build_model(cfg, data.num_classes, data.in_chans), "bench", on_step=bare_step)
    return bare_s, engine_s


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--micro-batch", type=int, default=128)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--bn", default="ghost", choices=["ghost", "micro"])
    p.add_argument("--steps", type=int, default=60, help="timed optimizer steps of each (at most one epoch's worth)")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps of each before them")
    p.add_argument("--channels-last", choices=["true", "false"], default="true", help="both loops (the default)")
    p.add_argument("--compile", action="store_true", help="both loops torch.compile'd (inductor)")
    p.add_argument("--bare", choices=["same", "nchw-eager"], default="same",
                   help="the bare loop with the same options, or eager NCHW whatever the engine's")
    args = p.parse_args()
    W = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = Config(model="resnet_fmnist", micro_batch=args.micro_batch, bn=args.bn, bn_batch=32,
                 global_batch=args.micro_batch * W * args.accumulation, warmup="none", seed=0,
                 channels_last=args.channels_last == "true", compile=args.compile).validate()
    bare_cfg = dataclasses.replace(cfg, channels_last=False, compile=False) if args.bare == "nchw-eager" else cfg
    data = load_fashion_mnist()
    # One epoch, so no evaluation falls between timed steps.
    steps = min(args.steps, data.num_train // cfg.global_batch - args.warmup)
    if steps < 2:
        p.error(f"global batch {cfg.global_batch} leaves {steps} timed steps in one epoch of {data.num_train} "
                f"examples after --warmup {args.warmup}: use a smaller --micro-batch or --accumulation")
    data.test_x, data.test_y = data.test_x[:1024], data.test_y[:1024]  # the engine's final evaluation, untimed
    if W > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // W))
        init_gloo_for_this_attempt()  # the bare loop's DDP needs it before the engine starts
    bare_s, engine_s = interleaved(cfg, data, steps, args.warmup, bare_cfg)
    if W > 1:
        dist.destroy_process_group()  # ours, so still up: this raises if the engine had torn it down
    # Inclusive quartiles stay inside the measured ratios (the default method extrapolates past them, below
    # zero on a 2-step smoke run).
    quartiles = statistics.quantiles([b / e for b, e in zip(bare_s, engine_s)], n=4, method="inclusive")
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(dict(processes=W, micro_batch=args.micro_batch, accumulation=args.accumulation, bn=args.bn,
                              channels_last=cfg.channels_last, compile=cfg.compile, bare_options=args.bare,
                              steps=steps, bare=cfg.global_batch / statistics.median(bare_s),
                              engine=cfg.global_batch / statistics.median(engine_s),
                              ratio_quartiles=quartiles,
                              overhead_ms=1e3 * statistics.median([e - b for b, e in zip(bare_s, engine_s)]))),
              flush=True)


if __name__ == "__main__":
    main()
