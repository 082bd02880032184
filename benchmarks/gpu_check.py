"""One prepared GPU check: ResNet-50 speed through the engine and a bare loop, ghost BN, nvJPEG, ZeRO-2 and
split invariance on one GPU, in one Markdown table and one JSON file.

    .venv/bin/python benchmarks/gpu_check.py --out runs/gpu_check      # `make gpu-check`; < 8 min on one H200
    .venv/bin/python benchmarks/gpu_check.py --device cpu              # the tiny CPU version (~2 min, 2 cores)

Each part runs in its own process under a time limit (and all of them under --budget), so a part that
fails or hangs costs its own row, not the check:
- engine vs bare loop: ResNet-50 in bf16 through `engine.train` and through engine_vs_bare.py's BareLoop
  with the same options (NCHW; channels-last; channels-last and compiled), interleaved step by step as
  engine_vs_bare.py does; target: engine >= 0.95x the bare loop;
- ghost vs plain BN: ghost_bn.py's paired steps (NCHW and channels-last); target: ghost >= 0.95x plain;
- JPEG decode: `--decode gpu` (nvJPEG) on input_pipeline.py's synthetic ImageNet-size JPEGs, against the
  CPU decode (libjpeg-turbo) on one core;
- ZeRO-2 on one GPU (`accelerate launch --num_processes 1` with accelerate_configs/zero2.yaml);
- split invariance: 1 x 8 x 32 against 1 x 1 x 256 with ghost BN, step by step against the float32 drift
  rule of tests/conftest.py (`drift_tolerance`), in fp32 with TF32 off, as the rule assumes;
- NVIDIA's published per-GPU ResNet-50 v1.5 training rates, beside the engine's best.
The speed parts train on random images held on the GPU, so they time the training step, not a loader.
Without a GPU (`--device cpu`, or auto on a machine without one) a tiny version runs: resnet_fmnist on
28x28 images, micro-batch 32, fp32, a few steps; the GPU-only rows say "not run: no GPU".
Writes gpu_check.md and gpu_check.json in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# NVIDIA DeepLearningExamples, ResNet50 v1.5 for PyTorch, "Training performance results" (pytorch-21.03 NGC
# container, DALI, batch 256 per GPU): 1-GPU rows. No H100 or H200 row is published there; these are the
# nearest GPUs it lists.
NVIDIA_URL = ("https://github.com/NVIDIA/DeepLearningExamples/blob/master/PyTorch/Classification/ConvNets/"
              "resnet50v1.5/README.md#training-performance-results")
NVIDIA = [("A100 80GB (DGX A100)", "mixed precision", 2470), ("A100 80GB (DGX A100)", "TF32", 938),
          ("V100 16GB (DGX-1)", "mixed precision", 1200), ("V100 32GB (DGX-1)", "mixed precision", 1156)]

# Part name -> (time limit in s on a GPU, on CPU). Run in this order: the costly compile last.
PARTS = {"engine_nchw": (120, 120), "engine_channels_last": (90, 120), "ghost_bn": (90, 120), "split": (120, 120),
         "decode": (120, 120), "zero2": (150, 240), "engine_compiled": (300, 0)}
GPU_ONLY = {"engine_compiled"}  # on CPU, inductor's C++ compile of ResNet-50 alone takes minutes
TARGET = 0.95


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, naming the argument, instead of usage + message
        sys.stderr.write(f"gpu_check.py: error: {message} (see --help)\n")
        sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.md and gpu_check.json")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="cuda: the full check; cpu: the tiny version; auto: cuda when there is one")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {','.join(PARTS)}")
    p.add_argument("--model", help="timm model (default: resnet50 on GPU, resnet_fmnist on CPU)")
    p.add_argument("--size", type=int, help="image size (default: 224 on GPU, 28 on CPU)")
    p.add_argument("--micro-batch", type=int, help="examples per step (default: 256 on GPU, 32 on CPU)")
    p.add_argument("--steps", type=int, help="timed steps per speed part (default: 30 on GPU, 3 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 5 on GPU, 1 on CPU)")
    p.add_argument("--split-steps", type=int, help="steps of the split check (default: 20 on GPU, 3 on CPU)")
    p.add_argument("--budget", type=float, default=450, help="seconds for all parts; later parts are skipped")
    p.add_argument("--data", default="", help="where the synthetic JPEGs go (default: OUT/jpegs)")
    p.add_argument("--part", default="", help=argparse.SUPPRESS)  # internal: run one part, print its JSON
    args = p.parse_args(argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = [s for s in parts if s not in PARTS]
    if unknown or not parts:
        p.error(f"argument --parts: unknown part {unknown[0]!r}; the parts are {','.join(PARTS)}" if unknown
                else "argument --parts: names no part")
    args.parts = parts
    if args.part and args.part not in PARTS:
        p.error(f"argument --part: unknown part {args.part!r}")
    for name in ("size", "micro_batch", "steps", "split_steps", "warmup"):
        value = getattr(args, name)
        if value is not None and (value < 0 or value == 0 and name != "warmup"):
            p.error(f"argument --{name.replace('_', '-')}: {value} must be "
                    f"{'positive' if name != 'warmup' else 'zero or more'}")
    if args.budget <= 0:
        p.error(f"argument --budget: {args.budget:g} must be positive")
    gpu = _cuda_available() if args.device == "auto" else args.device == "cuda"
    if args.device == "cuda" and not _cuda_available():
        p.error("argument --device: cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    args.device = "cuda" if gpu else "cpu"
    defaults = dict(model="resnet50", size=224, micro_batch=256, steps=30, warmup=5, split_steps=20) if gpu else \
        dict(model="resnet_fmnist", size=28, micro_batch=32, steps=3, warmup=1, split_steps=3)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.micro_batch % bn_batch(args):
        p.error(f"argument --micro-batch: {args.micro_batch} is not a multiple of the ghost BN group {bn_batch(args)}")
    args.dtype = "bf16" if gpu else "fp32"
    args.data = args.data or str(Path(args.out) / "jpegs")
    return args


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def bn_batch(args) -> int:
    """Ghost BN's group n: the paper's 32 on a GPU, 16 in the CPU version (its micro-batch is 32)."""
    return 32 if args.device == "cuda" else 16


def split_shape(args) -> tuple[int, int]:
    """(global batch, micro-batch) of the split check: 1 x 8 x 32 against 1 x 1 x 256 on a GPU, 4 x 16 vs 64 on CPU."""
    return (256, 32) if args.device == "cuda" else (64, 16)


# ---- the parts, each run in its own process (`--part NAME`) ------------------------------------------

class _Batch:
    """A micro-batch of the synthetic set, made on the training device when the engine calls `.to` (as
    images.ImageBatch is): a gather from the pool and the normalization, in the asked memory format."""

    def __init__(self, pool, index):
        self.pool, self.index = pool, index

    def to(self, device, non_blocking=False, memory_format=None):
        import torch
        x = self.pool[self.index.to(self.pool.device)].to(device).float().sub_(127.5).div_(64.0)
        return x.contiguous(memory_format=memory_format or torch.contiguous_format)

    def pin_memory(self):  # the DataLoader pins what it yields on a CUDA machine; the pool is on the GPU already
        return self


class Synthetic:
    """Random uint8 images and labels held on the training device, behind the engine's data interface
    (data.py): `num_train` examples cycle through a pool of `pool` images. No augmentation: the speed parts
    time the training step, not a loader."""

    in_chans = 3

    def __init__(self, device, size: int, num_train: int, num_classes: int = 1000, pool: int = 512,
                 num_test: int = 0):
        import torch
        g = torch.Generator().manual_seed(0)
        self.pool = torch.randint(0, 256, (pool, 3, size, size), generator=g, dtype=torch.uint8).to(device)
        self.labels = torch.randint(0, num_classes, (pool,), generator=g)
        self.num_train, self.num_test, self.num_classes = num_train, num_test or min(pool, 256), num_classes

    def train_batch(self, indices, seed=0, epoch=0):
        i = indices % len(self.labels)
        return _Batch(self.pool, i), self.labels[i]

    def test_batch(self, indices):
        return self.train_batch(indices)


class _OnDevice:
    """The same data set, its batches materialized on `device` in `memory_format`: for the bare loop, which
    feeds `train_batch`'s images straight to the model."""

    def __init__(self, data, device, memory_format):
        self.data, self.device, self.memory_format = data, device, memory_format
        self.num_train, self.num_classes, self.in_chans = data.num_train, data.num_classes, data.in_chans

    def train_batch(self, indices, seed=0, epoch=0):
        x, y = self.data.train_batch(indices, seed, epoch)
        return x.to(self.device, memory_format=self.memory_format), y.to(self.device)


def _device_bare_loop(base, device: str, dtype):
    """engine_vs_bare.BareLoop on `device`: model and batches there, bf16 autocast when asked, and a
    synchronize at the end of each step so its time is its own (the engine's step ends in a `.item()`)."""
    import torch

    from largebatch.training.models import memory_format

    class DeviceBareLoop(base):
        def __init__(self, cfg, data):
            super().__init__(cfg, _OnDevice(data, device, memory_format(cfg)))
            self.model.to(device)  # in place (before the compiled module first runs): the optimizer keeps them

        def step(self):
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                super().step()
            if device == "cuda":
                torch.cuda.synchronize()
    return DeviceBareLoop


def _speed_config(args, **options):
    from largebatch.training.config import Config
    return Config(model=args.model, global_batch=args.micro_batch, micro_batch=args.micro_batch, bn="ghost",
                  bn_batch=bn_batch(args), warmup="none", precise_bn=0, seed=0, **options).validate()


def _set_precision(args) -> None:
    """The engine's precision, as `accelerate launch --mixed_precision` would set it."""
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if args.dtype == "bf16" else "no"


def part_engine(args, channels_last: bool, compile: bool) -> dict:
    """Engine against BareLoop, interleaved step by step (engine_vs_bare.interleaved), same options."""
    import torch

    import engine_vs_bare
    _set_precision(args)
    cfg = _speed_config(args, channels_last=channels_last, compile=compile)
    data = Synthetic(args.device, args.size, (args.warmup + args.steps) * cfg.global_batch)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    bare_s, engine_s = engine_vs_bare.interleaved(
        cfg, data, args.steps, args.warmup, bare_loop=_device_bare_loop(engine_vs_bare.BareLoop, args.device, dtype))
    ratios = [b / e for b, e in zip(bare_s, engine_s)]
    q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return dict(steps=len(engine_s), bare=cfg.global_batch / statistics.median(bare_s),
                engine=cfg.global_batch / statistics.median(engine_s), ratio=statistics.median(ratios),
                ratio_quartiles=[q[0], q[2]])


def part_ghost_bn(args) -> dict:
    """ghost_bn.measure for NCHW and channels-last."""
    import ghost_bn
    out = {}
    for layout, cl in (("nchw", False), ("channels_last", True)):
        ns = argparse.Namespace(size=args.size, micro_batch=args.micro_batch, bn_batch=bn_batch(args),
                                steps=max(2, args.steps), warmup=args.warmup, device=args.device, dtype=args.dtype,
                                channels_last=cl)
        r = ghost_bn.measure(args.model if args.model in ghost_bn.SHAPES else "resnet50", ns)
        out[layout] = dict(plain=r["plain"], ghost=r["ghost"], ratio=r["ratio"], ratio_quartiles=list(r["ratio_quartiles"]),
                           steps=r["steps"])
    return out


def part_decode(args) -> dict:
    """Images/s of `--decode gpu` (nvJPEG, crops on the GPU) and of the CPU decode on one core, over the same
    training examples of input_pipeline.py's synthetic ImageNet-size JPEGs."""
    import torch

    from input_pipeline import write_jpegs
    from largebatch.training.images import load_imagenet
    count = 256 if args.device == "cuda" else 16
    batch = 64 if args.device == "cuda" else 8
    root = write_jpegs(Path(args.data), count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(1)
    out = dict(images=count, batch=batch)

    def rate(data, device):
        data.train_batch(order[:2], 0, 0)[0].to(device)  # warm up: first file, lazy imports, nvJPEG handle
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for indices in order.split(batch):
            x = data.train_batch(indices, 0, 0)[0].to(device)
            assert x.shape[1:] == (3, 224, 224), x.shape
        if device == "cuda":
            torch.cuda.synchronize()
        return count / (time.perf_counter() - start)
    out["cpu_per_core"] = rate(load_imagenet(str(root), "cpu"), "cpu")
    if args.device == "cuda":
        out["gpu"] = rate(load_imagenet(str(root), "gpu"), "cuda")
    return out


def _timed_train(cfg, data, run_dir: str) -> list[float]:
    """engine.train, and the seconds between consecutive step rows of its metrics log."""
    from largebatch.training import engine
    from largebatch.training.models import build_model
    stamps = []
    engine.train(cfg, data, build_model(cfg, data.num_classes, data.in_chans), "gpu-check",
                 on_step=lambda step, row: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def _step_rows(run_dir: str) -> list[dict]:
    from largebatch.training.metrics import read_metrics
    from largebatch.training.runfolder import RunFolder
    return read_metrics(RunFolder(run_dir).metrics)[0]


def part_zero2(args) -> dict:
    """The engine under DeepSpeed ZeRO-2 in one process (this part is started by accelerate launch)."""
    import dataclasses
    import math

    from largebatch.training.runfolder import LOSS, Mode, RunFolder

    _set_precision(args)
    cfg = _speed_config(args, channels_last=args.device == "cuda")
    data = Synthetic(args.device, args.size, (args.warmup + args.steps + 1) * cfg.global_batch)
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(cfg, subset=data.num_train, epochs=1, checkpoint_every=10 ** 9,
                                  run_dir=os.path.join(tmp, "run"))
        seconds = _timed_train(run, data, run.run_dir)[args.warmup:]
        info = RunFolder(run.run_dir).read_config()
        losses = [r[LOSS] for r in _step_rows(run.run_dir)]
    return dict(mode=Mode.of(info["mode"]).sentence, steps=len(seconds),
                images_per_s=cfg.global_batch / statistics.median(seconds),
                losses_finite=all(math.isfinite(v) for v in losses), last_loss=losses[-1])


def part_split(args) -> dict:
    """The same steps as 1 x A x micro and as 1 x 1 x B (ghost BN), their losses compared step by step."""
    import dataclasses

    import torch

    from largebatch.training.config import Config
    from largebatch.training.runfolder import LOSS
    os.environ["ACCELERATE_MIXED_PRECISION"] = "no"  # the drift rule is float32's
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    batch, micro = split_shape(args)
    data = Synthetic(args.device, args.size, args.split_steps * batch)
    losses = {}
    for name, m in (("accumulated", micro), ("whole", batch)):
        cfg = Config(model=args.model, global_batch=batch, micro_batch=m, bn="ghost", bn_batch=bn_batch(args),
                     warmup="none", precise_bn=0, seed=0, subset=data.num_train, epochs=1,
                     checkpoint_every=10 ** 9).validate()
        with tempfile.TemporaryDirectory() as tmp:
            run = dataclasses.replace(cfg, run_dir=os.path.join(tmp, "run"))
            _timed_train(run, data, run.run_dir)
            losses[name] = [r[LOSS] for r in _step_rows(run.run_dir)]
    return dict(batch=batch, micro=micro, accumulation=batch // micro, **losses,
                **compare_split(losses["accumulated"], losses["whole"], batch))


def compare_split(losses: list[float], reference: list[float], batch: int) -> dict:
    """Step-by-step loss differences against tests/conftest.py's drift rule; `within` is True when every
    step's difference is at most its tolerance."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import drift_tolerance
    if len(losses) != len(reference) or not losses:
        raise ValueError(f"the two runs logged {len(losses)} and {len(reference)} steps")
    diffs = [abs(a - b) for a, b in zip(losses, reference)]
    tols = [drift_tolerance(batch, b, k) for k, b in enumerate(reference)]
    worst = max(range(len(diffs)), key=lambda k: diffs[k] / tols[k])
    # Steps whose tolerance is below the loss itself: beyond them the rule no longer constrains anything.
    binding = sum(t < abs(b) for t, b in zip(tols, reference))
    return dict(diffs=diffs, tolerances=tols, max_diff=max(diffs), worst_step=worst,
                worst_diff=diffs[worst], worst_tolerance=tols[worst], worst_ratio=diffs[worst] / tols[worst],
                binding_steps=binding, within=all(d <= t for d, t in zip(diffs, tols)))


def run_part(args) -> dict:
    name = args.part
    if name == "engine_nchw":
        return part_engine(args, channels_last=False, compile=False)
    if name == "engine_channels_last":
        return part_engine(args, channels_last=True, compile=False)
    if name == "engine_compiled":
        return part_engine(args, channels_last=True, compile=True)
    return {"ghost_bn": part_ghost_bn, "decode": part_decode, "zero2": part_zero2, "split": part_split}[name](args)


# ---- the orchestration -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_command(args, name: str) -> list[str]:
    forwarded = ["--part", name, "--device", args.device, "--out", args.out, "--data", args.data, "--model",
                 args.model, "--size", str(args.size), "--micro-batch", str(args.micro_batch), "--steps",
                 str(args.steps), "--warmup", str(args.warmup), "--split-steps", str(args.split_steps)]
    if name != "zero2":
        return [sys.executable, str(Path(__file__).resolve()), *forwarded]
    # DeepSpeed needs a process group even on one device: accelerate launch --num_processes 1 sets it up.
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "accelerate_configs/zero2.yaml"), "--num_processes", "1", "--mixed_precision",
            "bf16" if args.dtype == "bf16" else "no", "--main_process_port", str(_free_port()),
            str(Path(__file__).resolve()), *forwarded]


def launch_part(args, name: str, limit: float) -> dict:
    """A part's result dict, or {"error": one line} when it failed or ran out of time."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(part_command(args, name), cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=limit)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {limit:.0f} s")
    found = [line for line in proc.stdout.splitlines() if line.startswith("{")]  # a launcher may log after it
    if proc.returncode or not found:
        last = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return dict(error=f"exit {proc.returncode}: {(last[-1] if last else 'no output')[:300]}")
    return json.loads(found[-1])


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _status(result: dict | None, key: str | None = None, gpu_only: bool = False, cuda: bool = True) -> str | None:
    """A row's status when it has no number: not run (no GPU, or out of time) or failed; None when it ran."""
    if gpu_only and not cuda:
        return "not run: no GPU"
    if result is None:
        return "not run: out of time (--budget)"
    if "skipped" in result:
        return f"not run: {result['skipped']}"
    if "error" in result:
        return f"failed: {result['error']}"
    if key is not None and key not in result:
        return "not run: no GPU"
    return None


def _target(ratio: float) -> str:
    return "met" if ratio >= TARGET else "missed"


def build_rows(results: dict, args) -> list[dict]:
    """The table's rows from the parts' results: check, setting, measured (text and numbers), against,
    ratio, target, status."""
    cuda = args.device == "cuda"
    prec = f"{args.dtype}, {args.size}², micro-batch {args.micro_batch}, ghost BN n={bn_batch(args)}"
    rows = []

    def row(check, setting, status, measured="", values=None, against="", ratio=None, target="", result=""):
        rows.append(dict(check=check, setting=setting, measured=measured if status is None else "",
                         values=values or {}, against=against, ratio=ratio, target=target,
                         status=result if status is None else status))

    for name, layout in (("engine_nchw", "NCHW"), ("engine_channels_last", "channels-last"),
                         ("engine_compiled", "channels-last, compiled")):
        r = results.get(name)
        st = _status(r, gpu_only=name in GPU_ONLY, cuda=cuda)
        row("engine vs bare loop", f"{args.model} {prec}, {layout}", st,
            **({} if st else dict(measured=f"engine {_fmt(r['engine'])} img/s, bare {_fmt(r['bare'])} img/s "
                                           f"({r['steps']} paired steps)",
                                  values=dict(engine=r["engine"], bare=r["bare"], steps=r["steps"],
                                              ratio_q1=r["ratio_quartiles"][0], ratio_q3=r["ratio_quartiles"][1]),
                                  against="bare loop, same options", ratio=r["ratio"], target=f"≥ {TARGET}",
                                  result=_target(r["ratio"]))))
    g = results.get("ghost_bn")
    for layout, label in (("nchw", "NCHW"), ("channels_last", "channels-last")):
        st = _status(g)
        r = None if st else g[layout]
        model = args.model if args.model == "resnet_fmnist" else "resnet50"  # the models ghost_bn.py builds
        row("ghost vs plain BN", f"{model} {args.dtype}, {args.size}², micro-batch {args.micro_batch}, n="
            f"{bn_batch(args)}, {label}", st,
            **({} if st else dict(measured=f"ghost {_fmt(r['ghost'])} img/s, plain {_fmt(r['plain'])} img/s "
                                           f"({r['steps']} paired steps)",
                                  values=dict(ghost=r["ghost"], plain=r["plain"], steps=r["steps"]),
                                  against="plain BN (micro-batch)", ratio=r["ratio"], target=f"≥ {TARGET}",
                                  result=_target(r["ratio"]))))
    d = results.get("decode")
    best = max([results[n]["engine"] for n in ("engine_nchw", "engine_channels_last", "engine_compiled")
                if n in results and "engine" in results[n]], default=None)
    st = _status(d, "gpu", gpu_only=True, cuda=cuda)
    row("JPEG decode, `--decode gpu` (nvJPEG)", "synthetic ImageNet-size JPEGs, 224² crops", st,
        **({} if st else dict(measured=f"{_fmt(d['gpu'])} img/s", values=dict(gpu=d["gpu"], images=d["images"]),
                              against=f"CPU decode, 1 core: {_fmt(d['cpu_per_core'])} img/s",
                              ratio=d["gpu"] / d["cpu_per_core"], target="(cores it stands for)", result="ran")))
    st = _status(d)
    row("JPEG decode, CPU (libjpeg-turbo)", "same JPEGs, 1 core, no loader workers", st,
        **({} if st else dict(measured=f"{_fmt(d['cpu_per_core'])} img/s per core",
                              values=dict(cpu_per_core=d["cpu_per_core"], images=d["images"]),
                              against=f"the engine's best: {_fmt(best)} img/s" if best else "",
                              ratio=best / d["cpu_per_core"] if best else None,
                              target="(cores to feed it)" if best else "", result="ran")))
    z = results.get("zero2")
    st = _status(z)
    plain = results.get("engine_channels_last" if cuda else "engine_nchw", {}).get("engine")
    row("ZeRO-2, 1 process", f"{args.model} {prec}, {'channels-last' if cuda else 'NCHW'}", st,
        **({} if st else dict(measured=f"{_fmt(z['images_per_s'])} img/s ({z['steps']} steps), "
                                       f"{z['mode']}, losses {'finite' if z['losses_finite'] else 'NOT finite'}",
                              values=dict(images_per_s=z["images_per_s"], steps=z["steps"], last_loss=z["last_loss"]),
                              against="engine without DeepSpeed, same layout" if plain else "",
                              ratio=z["images_per_s"] / plain if plain else None,
                              result="ran" if z["losses_finite"] else "failed: non-finite loss")))
    s = results.get("split")
    st = _status(s)
    batch, micro = split_shape(args)
    row("split invariance", f"{args.split_steps} steps, 1 × {batch // micro} × {micro} vs 1 × 1 × {batch}, ghost BN "
        f"n={bn_batch(args)}, fp32{' (TF32 off)' if cuda else ''}", st,
        **({} if st else dict(measured=f"largest loss difference {s['max_diff']:.2g}; against the rule, the worst: "
                                       f"{s['worst_diff']:.2g} at step {s['worst_step']}",
                              values=dict(max_diff=s["max_diff"], worst_step=s["worst_step"], worst_diff=s["worst_diff"],
                                          worst_tolerance=s["worst_tolerance"], binding_steps=s["binding_steps"]),
                              against=f"drift rule B·u·loss·8^k: {s['worst_tolerance']:.2g} at step {s['worst_step']}",
                              ratio=s["worst_ratio"], target="≤ 1 at every step",
                              result="met" if s["within"] else "missed")))
    for gpu, precision, rate in NVIDIA:
        st = None if cuda and best else "not run: no GPU" if not cuda else "not run: no engine rate"
        row("NVIDIA published, ResNet-50 v1.5, 1 GPU", f"{gpu}, {precision}", st,
            **({} if st else dict(measured=f"engine's best here: {_fmt(best)} img/s",
                                  values=dict(ours=best, nvidia=rate), against=f"{rate:,} img/s", ratio=best / rate,
                                  result="reference")))
    return rows


def table(report: dict) -> str:
    lines = [f"GPU check on {report['device']} ({report['mode']} version), torch {report['torch']}, "
             f"{report['date']}, commit {report['commit']}, {report['seconds']:.0f} s.", "",
             "| check | setting | measured | against | ratio | target | result |", "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ratio = "" if r["ratio"] is None else f"**{r['ratio']:.3f}**" if r["ratio"] < 100 else f"{r['ratio']:,.0f}"
        lines.append(f"| {r['check']} | {r['setting']} | {r['measured']} | {r['against']} | {ratio} | {r['target']} "
                     f"| {r['status']} |")
    if report["mode"] != "GPU":
        lines += ["", "The tiny CPU version is a smoke run of the check on a shared CPU: its speeds and ratios "
                      "(a few steps each) are not measurements, and the GPU rows were not run."]
    lines += ["", f"NVIDIA's rates: {NVIDIA_URL} (pytorch-21.03 NGC container, DALI, 256 images per GPU; it "
                  f"publishes no H100 or H200 row, so the nearest GPUs are shown). Ratios are paired medians "
                  f"(engine_vs_bare.py, ghost_bn.py); the split row's ratio is the worst step's loss difference over its "
                  f"tolerance, and the rule constrains the first {_binding(report)} steps (after them the "
                  f"tolerance exceeds the loss)."]
    return "\n".join(lines) + "\n"


def _binding(report: dict) -> str:
    for r in report["rows"]:
        if r["check"] == "split invariance" and "binding_steps" in r["values"]:
            return str(r["values"]["binding_steps"])
    return "few"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part:
        print(json.dumps(run_part(args)), flush=True)
        return 0
    import torch
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    start, results = time.time(), {}
    for name, (gpu_limit, cpu_limit) in PARTS.items():
        if name not in args.parts:
            results[name] = dict(skipped="not asked for (--parts)")
            continue
        if name in GPU_ONLY and not cuda:
            continue
        left = args.budget - (time.time() - start)
        if left < 20:
            print(f"{name}: not run, {left:.0f} s of the budget left", flush=True)
            continue
        results[name] = launch_part(args, name, min(gpu_limit if cuda else cpu_limit, left))
        print(f"{name} [{time.time() - start:.0f} s]: {json.dumps(results[name])[:300]}", flush=True)
    report = dict(device=torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
                  mode="GPU" if cuda else "tiny CPU", torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                  commit=_commit(), seconds=time.time() - start,
                  settings=dict(model=args.model, size=args.size, micro_batch=args.micro_batch, dtype=args.dtype,
                                steps=args.steps, warmup=args.warmup, split_steps=args.split_steps,
                                bn_batch=bn_batch(args), budget=args.budget),
                  nvidia=dict(url=NVIDIA_URL, rates=[dict(gpu=g, precision=p, images_per_s=r) for g, p, r in NVIDIA]),
                  parts=results)
    report["rows"] = build_rows(results, args)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(table(report))
    print(table(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
