"""The training loop every recipe shares: Accelerate, the paper's recipe, metrics and checkpoints."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from tqdm.auto import tqdm

from . import checkpoint
from .config import Config
from .errors import UserError
from .metrics import MetricsLog, write_summary
from .noise import NoiseScale, adascale_gain
from .optim import build_optimizer
from .schedule import Schedule, lr_at
from .sharding import epoch_order, micro_batches


def _init_gloo_for_this_attempt() -> None:
    """The gloo process group, its rendezvous keys namespaced by torchrun's restart count.

    After `--max_restarts` relaunches the workers, the rendezvous store still holds the dead workers'
    addresses; without a fresh namespace gloo may connect to them and fail (pytorch#167288).
    Accelerate keeps a process group that already exists.
    """
    store, rank, world_size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("gloo", store=dist.PrefixStore(f"largebatch/attempt_{attempt}", store),
                            rank=rank, world_size=world_size)


def make_accelerator(cfg: Config) -> Accelerator:
    """An Accelerator that is really distributed on CPU too.

    Without `cpu=True` Accelerate on a CPU-only machine silently trains each launched process alone;
    DeepSpeed on CPU needs the gloo backend named explicitly.
    """
    cpu = not torch.cuda.is_available()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # Named only when launched: for a lone process the backend would make Accelerate expect a process group.
    handlers = [InitProcessGroupKwargs(backend="gloo")] if cpu and launched > 1 else []
    if cpu and launched > 1 and not dist.is_initialized():
        _init_gloo_for_this_attempt()
    if uses_wandb(cfg):
        os.environ.setdefault("WANDB_MODE", "online" if os.environ.get("WANDB_API_KEY") else "offline")
    accelerator = Accelerator(cpu=cpu, kwargs_handlers=handlers, log_with="wandb" if uses_wandb(cfg) else None)
    actual = dist.get_world_size() if dist.is_initialized() else 1
    if accelerator.num_processes != launched or actual != launched:
        raise UserError(f"launched {launched} processes but Accelerate sees {accelerator.num_processes} and "
                        f"torch.distributed {actual}: each would train alone; launch with an accelerate "
                        f"config from accelerate_configs/ (on CPU: ACCELERATE_USE_CPU=1)")
    if cpu and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores among the processes on this machine instead of oversubscribing them.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return accelerator


NOISE_DECAY = 0.95  # moving average of the noise estimates over about 20 optimizer steps


def uses_wandb(cfg: Config) -> bool:
    """--report-to wandb, or launched by `wandb agent` (it sets WANDB_SWEEP_ID): log to that sweep."""
    return cfg.report_to == "wandb" or bool(os.environ.get("WANDB_SWEEP_ID"))


def run_dir_of(cfg: Config, dataset: str) -> Path:
    """--run-dir; by default runs/<dataset>-B<batch>-seed<seed>, or one folder per run of a W&B agent."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return Path(f"runs/wandb-sweep-{os.environ['WANDB_SWEEP_ID']}/{os.environ['WANDB_RUN_ID']}")
    return Path(f"runs/{dataset}-B{cfg.global_batch}-seed{cfg.seed}")


def run_header(cfg: Config, world_size: int, micro: int, accumulation: int, sched: Schedule) -> str:
    return (f"global batch {cfg.global_batch} = micro-batch {micro} x {world_size} processes x "
            f"{accumulation} accumulation steps | lr {cfg.base_lr:g} x {cfg.global_batch}/{cfg.base_batch} = "
            f"{sched.peak_lr:g} | warmup {cfg.warmup if sched.warmup_steps else 'none'} "
            f"{sched.warmup_steps} steps | {sched.total_steps} steps ({sched.steps_per_epoch}/epoch), "
            f"{cfg.schedule} decay | BN {cfg.bn}" + (f" n={cfg.bn_batch}" if cfg.bn == "ghost" else ""))


class _Batches(torch.utils.data.Dataset):
    """Index tensors turned into (images, labels) by `fetch`, so a DataLoader can decode in workers."""

    def __init__(self, fetch, index_lists):
        self.fetch, self.index_lists = fetch, index_lists

    def __len__(self):
        return len(self.index_lists)

    def __getitem__(self, k):
        return self.fetch(self.index_lists[k])


def _epoch_batches(cfg, data, num_train, epoch, first_step, rank, world_size, accumulation):
    """This rank's micro-batches (images, labels) for the rest of the epoch, from step `first_step` on."""
    order = epoch_order(num_train, cfg.global_batch, cfg.seed, epoch)
    lists = [idx for row in order[first_step:] for idx in micro_batches(row, rank, world_size, accumulation)]
    return iter(_loader(cfg, functools.partial(data.train_batch, seed=cfg.seed, epoch=epoch), lists))


def _accumulated_step(accelerator, model, optimizer, batches, accumulation, grad_sq, check_gradients) -> torch.Tensor:
    """One optimizer step over `accumulation` micro-batches, on this rank:
    [loss sum, wrong, examples, |first micro-batch's gradient|², |whole batch's gradient|²].

    Accelerate's `accumulate` skips the all-reduce and the optimizer step until the last micro-batch;
    `accelerator.backward` divides each micro-batch's mean loss by the accumulation steps, so the
    update is the gradient of the mean loss over all B examples. The two squared norms feed the noise
    scale: the first micro-batch's gradient is still local (not yet all-reduced) when accumulating.
    """
    stats = torch.zeros(5, device=accelerator.device)
    for a in range(accumulation):
        x, y = (t.to(accelerator.device, non_blocking=True) for t in next(batches))
        with accelerator.accumulate(model):
            out = model(x)
            loss = F.cross_entropy(out, y)
            accelerator.backward(loss)
            if a == 0 and accumulation > 1:
                stats[3] = accumulation ** 2 * grad_sq()
            if accelerator.sync_gradients:
                stats[4] = check_gradients()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        stats[:3] += torch.stack([loss.detach().float() * len(y), (out.argmax(1) != y).sum().float(),
                                  torch.tensor(float(len(y)), device=x.device)])
    return stats


def _grad_sq(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads).float() ** 2 if grads else torch.zeros(())


def _loader(cfg, fetch, index_lists):
    return torch.utils.data.DataLoader(_Batches(fetch, index_lists), batch_size=None, num_workers=cfg.workers,
                                       pin_memory=torch.cuda.is_available())


@torch.no_grad()
def evaluate(cfg, accelerator, model, data) -> tuple[float, float]:
    """(test error, test loss) over the whole test set, each process taking every W-th example."""
    model.eval()
    mine = torch.arange(accelerator.process_index, data.num_test, accelerator.num_processes)
    totals = torch.zeros(3, device=accelerator.device)  # wrong, loss sum, count
    for x, y in _loader(cfg, data.test_batch, mine.split(4 * cfg.micro_batch)):
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        out = model(x).float()
        totals += torch.stack([(out.argmax(1) != y).sum().float(), F.cross_entropy(out, y, reduction="sum"),
                               torch.tensor(float(len(y)), device=out.device)])
    model.train()
    wrong, loss, count = accelerator.reduce(totals, "sum").tolist()
    return wrong / count, loss / count


class Diverged(UserError):
    """A non-finite loss or gradient: the run stops before the bad update reaches a checkpoint."""


def _divergence(what: str, step: int, lr: float, cfg: Config, sched: Schedule, ckpt_dir: Path) -> str:
    if cfg.warmup == "none" and cfg.global_batch > cfg.base_batch:
        cause = "no warmup at a large batch: use --warmup gradual"
    elif step < sched.warmup_steps:
        cause = "the rate rises too fast or too high: lengthen --warmup-epochs or lower --base-lr"
    else:
        cause = f"the rate is too high for global batch {cfg.global_batch}: lower --base-lr or the batch"
    kept = checkpoint.completed(ckpt_dir)
    last = f"; the last good checkpoint {kept[-1]} is intact (--resume continues from it)" if kept else ""
    return f"training diverged: {what} is not finite at step {step}, learning rate {lr:.4g}; likely cause: {cause}{last}"


def _check_finite(grad_sq, step, lr, cfg, sched, ckpt_dir) -> torch.Tensor:
    """The all-reduced gradient's squared norm; stops before an optimizer step if it is not finite
    (identical on every rank after all-reduce)."""
    sq = grad_sq()
    if not torch.isfinite(sq):
        raise Diverged(_divergence("the gradient", step, lr, cfg, sched, ckpt_dir))
    return sq


def _resume_point(cfg: Config, ckpt_dir: Path, data_id: dict) -> tuple[Path | None, dict]:
    """The checkpoint to continue from (None: start afresh) and its progress record."""
    found = checkpoint.completed(ckpt_dir)
    if found and not cfg.resume:
        raise UserError(f"{ckpt_dir.parent} already holds checkpoints; pass --resume to continue that run or "
                        f"choose another --run-dir")
    if not found:
        return None, {}
    usable = checkpoint.latest_usable(ckpt_dir)
    if usable is None:
        raise UserError(f"no checkpoint in {ckpt_dir} passes verification; move the folder away to start again")
    path, progress = usable
    changes = checkpoint.check_compatible(path, progress, cfg, data_id)
    if changes:
        print(f"warning: resuming {path} with changes allowed by --allow-change: {', '.join(changes)}",
              file=sys.stderr)
    return path, progress


def train(cfg: Config, data, model: torch.nn.Module, dataset: str = "data") -> dict:
    """Train `model` on `data` as `cfg` says; returns the last evaluation row.

    A process group that exists before the call is the caller's and outlives it (so one process can
    train several times); one the engine creates is torn down at the end, as gloo aborts at exit otherwise.
    """
    callers_group = dist.is_initialized()
    accelerator = make_accelerator(cfg)
    try:
        return _train(cfg, data, model, dataset, accelerator)
    finally:
        if callers_group:
            for tracker in accelerator.trackers:
                tracker.finish()
        else:
            accelerator.end_training()


def _train(cfg, data, model, dataset, accelerator):
    W, rank = accelerator.num_processes, accelerator.process_index
    micro, A = cfg.split(W)
    accelerator.gradient_accumulation_steps = A
    num_train = cfg.subset or data.num_train
    if num_train > data.num_train:
        raise UserError(f"--subset {cfg.subset} exceeds the {data.num_train} training examples")
    steps_per_epoch = num_train // cfg.global_batch
    if steps_per_epoch == 0:
        raise UserError(f"--global-batch {cfg.global_batch} is larger than the {num_train} training examples")
    # AdaScale's gain replaces linear scaling and warmup; the decay schedule stays.
    sched = Schedule(cfg.base_lr, cfg.base_batch, cfg.global_batch, steps_per_epoch, cfg.epochs,
                     "none" if cfg.optimizer == "adascale" else cfg.warmup, cfg.warmup_epochs, cfg.schedule)
    accelerator.print(run_header(cfg, W, micro, A, sched))
    deepspeed = accelerator.state.deepspeed_plugin is not None
    # The noise scale needs a gradient over part of the batch: the first micro-batch's, so accumulation.
    noise = NoiseScale(NOISE_DECAY) if A > 1 and not deepspeed else None
    if cfg.optimizer == "adascale" and noise is None:
        raise UserError(f"--optimizer adascale measures gradient noise from micro-batches, so it needs gradient "
                        f"accumulation (now {A}) and no DeepSpeed; use a smaller --micro-batch")
    if cfg.dry_run:
        return {}
    if cfg.bn == "sync" and W == 1:
        accelerator.print("note: --bn sync with one process is plain micro-batch BN")
    if cfg.bn == "sync" and W > 1 and accelerator.device.type == "cpu":
        raise UserError("--bn sync needs GPUs (torch's SyncBatchNorm runs only on GPU modules); on CPU use "
                        "--bn ghost, the paper's per-worker BN, or --bn micro")
    if accelerator.device.type == "cpu" and accelerator.mixed_precision != "no":
        accelerator.print(f"warning: {accelerator.mixed_precision} on CPU is often 5-40x slower than fp32")

    run_dir = run_dir_of(cfg, dataset)
    ckpt_dir = run_dir / "checkpoints"
    data_id = dict(name=dataset, num_train=num_train, num_classes=data.num_classes)
    resume_from, progress = _resume_point(cfg, ckpt_dir, data_id)
    info = dict(dataclasses.asdict(cfg), dataset=dataset, world_size=W, micro_batch_used=micro,
                accumulation_steps=A, peak_lr=sched.peak_lr, warmup_steps=sched.warmup_steps,
                total_steps=sched.total_steps, steps_per_epoch=steps_per_epoch)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(info, indent=2))
    if uses_wandb(cfg):
        for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "wandb/cache"), ("WANDB_DATA_DIR", "wandb/data")):
            os.environ.setdefault(var, str((run_dir / sub).resolve()))
        accelerator.init_trackers(cfg.wandb_project, config=info, init_kwargs={"wandb": {"name": run_dir.name}})

    optimizer = build_optimizer(cfg, model, lr_at(0, sched))
    if deepspeed:
        # We prepare no dataloader, so DeepSpeed learns the micro-batch from us; no clipping: not the paper's.
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=A, gradient_clipping=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)

    # Listed once: walking the module tree at every step costs ~0.2 ms, 0.25% of a small CPU step.
    grad_sq = functools.partial(_grad_sq, list(model.parameters()))
    log = MetricsLog(run_dir / "metrics.jsonl", accelerator)
    stats = torch.zeros(3, device=accelerator.device)  # training loss sum, wrong, seen since last eval
    start = 0
    if resume_from:
        try:
            accelerator.load_state(str(resume_from))
        except Exception as e:  # whatever the mismatch, the user needs the checkpoint and the option named
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise UserError(f"checkpoint {resume_from} does not fit this --model/optimizer "
                            f"({type(e).__name__}: {first})") from None
        start = min(progress["examples"] // cfg.global_batch, sched.total_steps)
        stats = torch.tensor(progress["train_stats"], device=accelerator.device)
        if noise is not None and progress.get("noise"):
            noise.load(progress["noise"])
        accelerator.print(f"resuming from {resume_from} at step {start}")
    elif cfg.resume:
        accelerator.print(f"no checkpoint in {ckpt_dir}; starting from step 0")
    log.start(progress["metrics_bytes"] if resume_from else 0)

    eval_steps = max(1, round(cfg.eval_every * steps_per_epoch))
    ckpt_steps = cfg.checkpoint_every or steps_per_epoch
    total = sched.total_steps
    bar = tqdm(total=total * cfg.global_batch, initial=start * cfg.global_batch, unit="img", unit_scale=True,
               disable=not accelerator.is_local_main_process, mininterval=2, dynamic_ncols=True)
    last_eval, batches = {}, None
    model.train()
    try:
        for step in range(start, total):
            epoch, s = divmod(step, steps_per_epoch)
            if batches is None or s == 0:
                batches = _epoch_batches(cfg, data, num_train, epoch, s, rank, W, A)
            lr, row = lr_at(step, sched), {}
            if cfg.optimizer == "adascale":
                scale = cfg.global_batch / cfg.base_batch
                row["gain"] = adascale_gain(*noise.estimates(), cfg.base_batch, scale) if noise.updates else 1.0
                lr = lr * row["gain"] / scale if scale > 1 else lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            check = functools.partial(_check_finite, grad_sq, step, lr, cfg, sched, ckpt_dir)
            mine = _accumulated_step(accelerator, model, optimizer, batches, A, grad_sq, check)
            step_stats = accelerator.reduce(mine, "sum")
            stats += step_stats[:3]
            step_loss = (step_stats[0] / step_stats[2]).item()
            if not math.isfinite(step_loss):
                raise Diverged(_divergence("the loss", step, lr, cfg, sched, ckpt_dir))
            if noise is not None:
                small_sq, big_sq = (step_stats[3:] / W).tolist()  # mean over ranks; big_sq is the same on all
                noise.update(small_sq, micro, big_sq, cfg.global_batch)
                row.update(zip(("grad_var", "grad_sq"), noise.estimates()), noise_scale=noise.b_simple)
            log.log(dict(step=step, epoch=(step + 1) / steps_per_epoch, lr=lr, loss=step_loss,
                         examples=(step + 1) * cfg.global_batch, **row), step=step)
            bar.update(cfg.global_batch)
            bar.set_postfix(epoch=f"{(step + 1) / steps_per_epoch:.2f}", lr=f"{lr:.3g}", loss=f"{step_loss:.3f}",
                            refresh=False)  # the bar redraws every `mininterval`, not at every step
            done = step + 1
            if done % eval_steps == 0 or done == total:
                test_error, test_loss = evaluate(cfg, accelerator, model, data)
                last_eval = dict(epoch=done / steps_per_epoch, train_error=(stats[1] / stats[2]).item(),
                                 test_error=test_error, test_loss=test_loss)
                stats.zero_()
                log.log(last_eval, step=step)
                if accelerator.is_local_main_process:
                    bar.write(f"epoch {last_eval['epoch']:.2f}: train error {last_eval['train_error']:.4f}, "
                              f"test error {test_error:.4f}, test loss {test_loss:.4f}")
            if done % ckpt_steps == 0 or done == total:
                checkpoint.save(accelerator, ckpt_dir, done, dict(
                    step=done, examples=done * cfg.global_batch,
                    config=cfg.trajectory(), dataset=data_id, metrics_bytes=log.synced_size(),
                    train_stats=stats.tolist(), noise=noise.state() if noise else None), cfg.keep_checkpoints)
    except Diverged as e:
        if accelerator.is_main_process:
            write_summary(run_dir, "diverged", message=str(e))
        raise
    finally:
        bar.close()  # before any error message, so that message is the last line
    if accelerator.is_main_process:
        write_summary(run_dir, "finished")
    return last_eval
