"""The training loop every recipe shares, read top to bottom.

`train` builds the Accelerator (launch.py), then `prepare` turns the options into a `Run`: the batch
split, the schedule, the run folder, the prepared model and optimizer, and the checkpoint it resumes
from. `train_loop` then takes one optimizer step at a time (step.py) with the rate the schedule gives
(schedule.py), logs it, and evaluates and checkpoints when due.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..errors import Stopped, UserError
from . import checkpoint
from .config import Config
from .evaluate import Evaluator
from .launch import (check_compiled, check_deepspeed_engaged, check_launch, compile_backend, finish, make_accelerator,
                     training_mode)
from .metrics import MetricsLog, write_summary
from .models import memory_format
from .noise import NoiseScale
from .optim import build_optimizer
from .preempt import StopSignals, die_with_launcher, stop_signal
from .rundir import FolderLock, run_dir_of
from .runfolder import (DIVERGED, EPOCH, EXAMPLES, FINISHED, GAIN, GRAD_SQ, GRAD_VAR, LOSS, LR, NOISE_SCALE, STEP,
                        TAU, TEST_ERROR, TEST_LOSS, TRAIN_ERROR, Mode, Progress, RunFolder, RunInfo)
from .schedule import Schedule, adascale_gain, lr_at, schedule_of
from .sharding import stream_loader
from .step import NonFinite, Stepper, Summing
from .tracking import log_summary, start_wandb, sweep_of, uses_wandb

NOISE_DECAY = 0.95  # moving average of the noise estimates over about 20 optimizer steps


class Diverged(UserError):
    """A non-finite loss or gradient: the run stops before the bad update reaches a checkpoint."""


@dataclasses.dataclass(frozen=True)
class Run:
    """What `prepare` builds once, whole, before the loop; `train_loop` reads it (and its objects step)."""
    cfg: Config
    data: object
    accelerator: Accelerator
    sched: Schedule
    micro: int  # examples per device per pass
    accumulation: int
    data_id: dict  # the data set's name, size and classes: a checkpoint must match it
    folder: RunFolder
    segments: list  # the run's history of splits (config.json), this launch's last
    stepper: Stepper
    log: MetricsLog
    evaluate: Evaluator
    noise: NoiseScale | None  # with accumulation (and not under DeepSpeed)
    on_step: Callable[[int, dict], None] | None = None  # `train`'s per-step callback

    def __post_init__(self):
        if self.sched.adascale and self.noise is None:  # AdaScale's gain reads the noise estimates at every step
            raise ValueError("AdaScale needs the noise scale measured (check_launch refuses such a launch)")

    @property
    def ckpt_dir(self) -> Path:
        return self.folder.checkpoints


@dataclasses.dataclass
class Position:
    """Where a run stands, advanced by `train_loop`: what a checkpoint's Progress saves and `_restore` reads
    back (with the noise averages, which live in Run.noise)."""
    start: int  # the first optimizer step still to take
    tau: float  # progress through the schedule: the step, or AdaScale's sum of gains (schedule.py)
    seen: torch.Tensor  # training loss sum, wrong, examples since the last evaluation


class Taken(NamedTuple):
    """An optimizer step taken, with its statistics still being summed over the ranks (step.Summing)."""
    step: int
    lr: float
    gain: float
    tau: float  # schedule progress before the step
    summing: Summing


def train(cfg: Config, data, model: torch.nn.Module, dataset: str = "data",
          on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Train `model` on `data` as `cfg` says; returns the last evaluation row ({} for --dry-run).

    `on_step(step, row)` is called on every rank right after each optimizer step's metrics row is logged
    (benchmarks time the engine's steps with it). A process group that exists before the call is the
    caller's and outlives it.
    """
    callers_group = dist.is_initialized()
    die_with_launcher()
    # From the start, not just the loop: SLURM's warning before a short time limit can come while the run
    # starts up (it then stops after its first step, with a checkpoint), and a second Ctrl-C or SLURM's
    # repeated SIGTERM must not kill the teardown of a stop.
    with StopSignals() as stop:
        accelerator = make_accelerator(cfg)
        lock = FolderLock()
        try:
            prepared = prepare(cfg, data, model, dataset, accelerator, lock, on_step)
            return train_loop(*prepared, stop) if prepared else {}
        except RuntimeError as e:  # torch raises a loader worker's death from its SIGCHLD handler, wherever we are
            if not str(e).startswith("DataLoader worker"):
                raise
            raise UserError(_worker_died(str(e), cfg, RunFolder(run_dir_of(cfg, dataset)).checkpoints)) from None
        finally:
            lock.release()
            finish(accelerator, callers_group)


def train_loop(run: Run, at: Position, stop: StopSignals) -> dict:
    """Optimizer steps until the schedule's progress reaches its end, evaluating and checkpointing when due.

    Each step's row is logged once its statistics are summed over the ranks, which runs beside the next step
    (before an evaluation or checkpoint, at once). Once `stop` has noted SIGTERM or SIGINT, every rank finishes
    the step in flight (on several processes, where the ranks learn of it from the sum, the next one too), a
    checkpoint is written and `Stopped` raised.
    """
    cfg, sched, acc = run.cfg, run.sched, run.accelerator
    total, per_epoch = sched.total_steps, sched.steps_per_epoch
    eval_steps = max(1, round(cfg.eval_every * per_epoch))
    ckpt_steps = cfg.checkpoint_every or max(1, round(per_epoch))
    # One bar, on the main process; there `disable` is left to tqdm, whose TQDM_DISABLE=1 an argument would override.
    bar = tqdm(total=total * cfg.global_batch, initial=at.start * cfg.global_batch, unit="img", unit_scale=True,
               mininterval=2, dynamic_ncols=True, **({} if acc.is_local_main_process else {"disable": True}))
    last_eval, step, saved = {}, at.start, at.start
    taken = None  # the step taken last, until its statistics, summed while the next step runs, are logged
    batches = _stream_batches(run, at.start, total - at.start)  # steps <= total: AdaScale's gain is >= 1
    try:
        while at.tau < total:
            gain = adascale_gain(*run.noise.estimates(), cfg.base_batch, sched.scale) if sched.adascale else 1.0
            lr = lr_at(at.tau, sched, gain)
            run.stepper.set_lr(lr)
            try:
                summing = run.stepper.step(batches, stop)
            except NonFinite:
                _log_step(run, at, taken, bar)  # the step before: its row, or its non-finite loss (the first)
                raise
            stopping = _log_step(run, at, taken, bar)  # ranks with a stop signal, as of the step before
            taken = Taken(step, lr, gain, at.tau, summing)
            at.tau += gain if sched.gained else 1
            step += 1
            due_eval = step % eval_steps == 0 or at.tau >= total
            due_ckpt = step % ckpt_steps == 0 or at.tau >= total
            # They read the statistics up to this step; so does AdaScale's next gain (its noise estimates).
            if due_eval or due_ckpt or sched.adascale:
                stopping, taken = _log_step(run, at, taken, bar), None
            if due_eval:
                last_eval = _evaluate(run, at, step - 1, bar)
            if due_ckpt:
                saved = _save(run, at, step)
            if at.tau < total and (signal_name := stop_signal(stop, stopping, acc.num_processes)):
                _log_step(run, at, taken, bar)  # the checkpoint holds the statistics up to this step
                raise _stopped(run, at, signal_name, step, saved)
    except NonFinite as e:
        message = _divergence(run, e.what, *((step, lr) if e.taken is None else (e.taken.step, e.taken.lr)))
        if acc.is_main_process:
            log_summary(acc, cfg, write_summary(run.folder.path, DIVERGED, message).to_dict())
        raise Diverged(message) from None
    finally:
        bar.close()  # before any error message, so that message is the last line
    if acc.is_main_process:
        log_summary(acc, cfg, write_summary(run.folder.path, FINISHED).to_dict())
    return last_eval


def prepare(cfg: Config, data, model: torch.nn.Module, dataset: str, accelerator: Accelerator, lock: FolderLock,
            on_step: Callable[[int, dict], None] | None = None) -> tuple[Run, Position] | None:
    """Check the launch, print the run header, lock and open the run folder and restore the checkpoint to
    resume from; None for --dry-run, after the header."""
    mode = training_mode(accelerator)
    if mode is not Mode.PLAIN and cfg.channels_last:
        # ZeRO flattens the weights into one buffer through views that need them contiguous (NCHW).
        accelerator.print("note: --channels-last is off under DeepSpeed (ZeRO needs contiguous weights)")
        cfg = dataclasses.replace(cfg, channels_last=False)
        model.to(memory_format=torch.contiguous_format)
    W = accelerator.num_processes
    micro, A = cfg.split(W)
    accelerator.gradient_accumulation_steps = A
    num_train = cfg.subset or data.num_train
    if num_train > data.num_train:
        raise UserError(f"--subset {cfg.subset} exceeds the {data.num_train} training examples")
    if num_train < cfg.global_batch:
        raise UserError(f"--global-batch {cfg.global_batch} is larger than the {num_train} training examples")
    sched = schedule_of(cfg, num_train / cfg.global_batch)
    accelerator.print(run_header(cfg, W, micro, A, sched, mode.zero, compile_backend(accelerator)))
    # The noise scale needs a gradient over part of the batch: the first micro-batch's, so accumulation.
    measure_noise = A > 1 and mode is Mode.PLAIN
    check_launch(cfg, accelerator, A, measure_noise)
    if cfg.dry_run:
        return None
    data_id = dict(name=dataset, num_train=num_train, num_classes=data.num_classes)
    folder = RunFolder(run_dir_of(cfg, dataset))
    lock.acquire(folder.path, accelerator)  # before anything in the folder is read or written
    split = dict(world_size=W, micro_batch=micro, accumulation=A)
    resume_from, progress = checkpoint.resume_point(cfg, folder.checkpoints, data_id, mode, split)
    segments = progress.segments + [dict(step=progress.step, **split, started=time.strftime("%Y-%m-%d %H:%M:%S"))]
    _open_run_dir(cfg, accelerator, folder, RunInfo(
        dataclasses.asdict(cfg), dataset=dataset, num_classes=data.num_classes, in_chans=data.in_chans,
        mode=mode.value, world_size=W, micro_batch_used=micro, accumulation_steps=A, peak_lr=sched.peak_lr,
        warmup_steps=sched.warmup_steps, total_steps=sched.total_steps, steps_per_epoch=sched.steps_per_epoch,
        segments=segments, sweep=sweep_of()))
    stepper = _stepper(cfg, model, accelerator, sched, micro, A, measure_noise)
    run = Run(cfg, data, accelerator, sched, micro, A, data_id, folder, segments, stepper,
              MetricsLog(folder.metrics, accelerator, folder.checkpoints), Evaluator(cfg, accelerator, data, micro),
              NoiseScale(NOISE_DECAY) if measure_noise else None, on_step)
    return run, _restore(run, resume_from, progress)


def _stepper(cfg: Config, model: torch.nn.Module, accelerator: Accelerator, sched: Schedule, micro: int, A: int,
             measure_noise: bool) -> Stepper:
    """The optimizer, and model and optimizer prepared by Accelerate (checked to be what the launch asked)."""
    optimizer = build_optimizer(cfg, model, lr_at(0, sched))
    if training_mode(accelerator) is not Mode.PLAIN:
        # We prepare no dataloader, so DeepSpeed learns the batch from us (all three numbers: the plugin's
        # config outlives this run, and a second run in the process would keep the first one's total);
        # no clipping: not the paper's.
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=A, train_batch_size=cfg.global_batch,
            gradient_clipping=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    check_deepspeed_engaged(model)
    check_compiled(model, accelerator)
    model.train()
    return Stepper(accelerator, model, optimizer, A, measure_noise, memory_format(cfg))


def run_header(cfg: Config, world_size: int, micro: int, accumulation: int, sched: Schedule,
               zero: int | None = None, compiled: str | None = None) -> str:
    batch = (f"global batch {cfg.global_batch} = micro-batch {micro} x {world_size} processes x "
             f"{accumulation} accumulation steps")
    if sched.gained:
        rate = (f"lr {cfg.base_lr:g} x AdaScale gain r in [1, {sched.scale:g}] | the B={cfg.base_batch} schedule of "
                f"{sched.total_steps} steps, read at tau += r: {sched.total_steps / sched.scale:.0f} to "
                f"{sched.total_steps} steps, {cfg.schedule} decay")
    else:
        k = {"linear": f"{cfg.global_batch}/{cfg.base_batch}", "sqrt": f"sqrt({cfg.global_batch}/{cfg.base_batch})",
             "none": "1 (no scaling)"}[cfg.lr_scaling]
        rate = (f"lr {cfg.base_lr:g} x {k} = {sched.peak_lr:g} | warmup "
                f"{cfg.warmup if sched.warmup_steps else 'none'} {sched.warmup_steps} steps | {sched.total_steps} "
                f"steps ({sched.steps_per_epoch:.4g}/epoch), {cfg.schedule} decay")
    return (f"{batch} | {rate} | BN {cfg.bn}" + (f" n={cfg.bn_batch}" if cfg.bn == "ghost" else "")
            + (f" | ZeRO stage {zero}" if zero is not None else "")
            + f" | {'channels-last' if cfg.channels_last else 'NCHW'}, {f'compiled ({compiled})' if compiled else 'eager'}")


# ---- the helpers of `prepare` ---------------------------------------------------------------------

def _open_run_dir(cfg: Config, accelerator: Accelerator, folder: RunFolder, info: RunInfo) -> None:
    """config.json (every option, the derived batch split and schedule, and the `segments` of the run so far:
    from which step it ran on which split), and W&B when asked."""
    if accelerator.is_main_process:
        folder.path.mkdir(parents=True, exist_ok=True)
        checkpoint.replace_file(folder.config, info.to_json(), folder.checkpoints)
    if uses_wandb(cfg):
        start_wandb(accelerator, cfg, folder.path, info.to_dict())


def _restore(run: Run, resume_from: Path | None, progress: Progress) -> Position:
    """Model, optimizer, RNG states and the noise averages; returns the step, schedule progress and the running
    training statistics (step 0 without a checkpoint)."""
    acc = run.accelerator
    at = Position(0, 0.0, torch.zeros(3, device=acc.device))
    if resume_from:
        try:
            acc.load_state(str(resume_from))
        except Exception as e:  # whatever the mismatch, the user needs the checkpoint and the option named
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise UserError(f"checkpoint {resume_from} does not fit this --model/optimizer "
                            f"({type(e).__name__}: {first})") from None
        at.start = progress.examples // run.cfg.global_batch
        at.tau = min(progress.tau, run.sched.total_steps) if run.sched.gained else at.start
        at.seen = torch.tensor(progress.train_stats, device=acc.device)
        if run.noise is not None and progress.noise:
            run.noise.load(progress.noise)
        acc.print(f"resuming from {resume_from} at step {at.start}")
        _announce_rate_change(run, at.start, progress)
    elif run.cfg.resume:
        acc.print(f"no checkpoint in {run.ckpt_dir}; starting from step 0")
    run.log.start(resume_from / checkpoint.LOG if resume_from else None)
    return at


def _announce_rate_change(run: Run, start: int, progress: Progress) -> None:
    """A resume with --allow-change reads the new options' schedule at the resume step: say what that does to
    the rate (extending a finished run's epochs moves its decays later, so its decayed rate jumps back up)."""
    if run.sched.gained or progress.config == run.cfg.trajectory() or start == 0:
        return
    old = dataclasses.replace(run.cfg, **{k: v for k, v in progress.config.items() if k in run.cfg.trajectory()})
    before = lr_at(start - 1, schedule_of(old, progress.dataset["num_train"] / old.global_batch))
    after = lr_at(start, run.sched)
    if math.isclose(before, after, rel_tol=1e-6):
        return
    change = f"{after / before:.3g}x up" if after > before else f"{before / after:.3g}x down"
    if run.accelerator.is_main_process:
        print(f"{'warning' if after > before else 'note'}: the changed options reschedule the rate: {before:.4g} at "
              f"step {start - 1} under the checkpoint's options, {after:.4g} at step {start} under these "
              f"({change})", file=sys.stderr)


# ---- the helpers of `train_loop` ------------------------------------------------------------------

def _stream_batches(run: Run, first_step: int, steps: int):
    """This rank's micro-batches (images, labels) for optimizer steps first_step ... first_step + steps - 1."""
    cfg, acc = run.cfg, run.accelerator
    return iter(stream_loader(functools.partial(_train_batch, run.data, cfg.seed), run.data_id["num_train"],
                              cfg.global_batch, cfg.seed, acc.process_index, acc.num_processes, run.accumulation,
                              first_step, steps, cfg.workers))


def _train_batch(data, seed: int, indices: torch.Tensor, epochs: torch.Tensor):
    """A micro-batch's (images, labels) from its indices and their epochs; a module-level function, so a
    DataLoader's worker processes can receive it."""
    return data.train_batch(indices, seed=seed, epoch=epochs)


def _log_step(run: Run, at: Position, taken: Taken | None, bar) -> torch.Tensor | None:
    """The step's row in metrics.jsonl (and W&B), once its statistics are summed, the noise-scale update, and
    the progress bar; returns the number of ranks that had a stop signal when the step ended (None for no
    step: nothing waiting to be logged)."""
    if taken is None:
        return None
    cfg, per_epoch, step = run.cfg, run.sched.steps_per_epoch, taken.step
    try:
        stats = taken.summing.wait()
    except NonFinite as e:
        e.taken = taken
        raise
    at.seen += torch.stack(stats[:3])
    row = {GAIN: taken.gain, TAU: taken.tau} if run.sched.adascale else {}
    if run.noise is not None and torch.isfinite(stats.batch_grad_sq):  # not a step fp16's scaler skipped
        W = run.accelerator.num_processes
        # Mean over ranks of the local micro-batch norms; the batch norm is the same on all.
        run.noise.update(stats.micro_grad_sq.item() / W, run.micro, stats.batch_grad_sq.item() / W,
                         cfg.global_batch)
        row.update(zip((GRAD_VAR, GRAD_SQ, NOISE_SCALE),
                       (*run.noise.estimates(), run.noise.b_simple)))
    loss = stats.loss
    row = {STEP: step, EPOCH: (step + 1) / per_epoch, LR: taken.lr, LOSS: loss,
           EXAMPLES: (step + 1) * cfg.global_batch, **row}
    run.log.log(row, step=step)
    if run.on_step:
        run.on_step(step, row)
    bar.update(cfg.global_batch)
    bar.set_postfix(epoch=f"{(step + 1) / per_epoch:.2f}", lr=f"{taken.lr:.3g}", loss=f"{loss:.3f}",
                    refresh=False)  # the bar redraws every `mininterval`, not at every step
    return stats.stop


def _evaluate(run: Run, at: Position, step: int, bar) -> dict:
    """Test error and loss, and the training error since the last evaluation; logged and printed."""
    test_error, test_loss = run.evaluate(run.stepper.model)
    row = {EPOCH: (step + 1) / run.sched.steps_per_epoch, TRAIN_ERROR: (at.seen[1] / at.seen[2]).item(),
           TEST_ERROR: test_error, TEST_LOSS: test_loss}
    at.seen.zero_()
    run.log.log(row, step=step)
    if run.accelerator.is_local_main_process:
        bar.write(f"epoch {row[EPOCH]:.2f}: train error {row[TRAIN_ERROR]:.4f}, "
                  f"test error {test_error:.4f}, test loss {test_loss:.4f}")
    return row


def _save(run: Run, at: Position, done: int) -> int:
    """Checkpoint `done` steps; returns `done`."""
    checkpoint.save(run.accelerator, run.ckpt_dir, done, Progress(
        step=done, examples=done * run.cfg.global_batch, tau=at.tau, config=run.cfg.trajectory(),
        dataset=run.data_id, mode=training_mode(run.accelerator).value, segments=run.segments,
        train_stats=at.seen.tolist(), noise=run.noise.state() if run.noise else None),
        run.cfg.keep_checkpoints, run.log.path)
    return done


def _stopped(run: Run, at: Position, signal_name: str, step: int, saved: int) -> Stopped:
    """After a stop signal: the step just taken checkpointed (unless it already was), and the line to end with."""
    if saved != step:
        _save(run, at, step)
    return Stopped(f"{signal_name} received: stopped after step {step} of {run.sched.total_steps} with checkpoint "
                   f"{run.ckpt_dir / f'step_{step:08d}'}; rerun the same command with --resume to continue")


def _worker_died(message: str, cfg: Config, ckpt_dir: Path) -> str:
    """The one line for a data-loading worker that died (torch: "DataLoader worker (pid 123) is killed by signal:
    Killed."): which, the likely cause, and the checkpoint --resume continues from."""
    what = message.strip().splitlines()[0].rstrip(". ")
    # torch words it by which of its checks sees the death first: "is killed by signal: Killed" or
    # "(pid(s) N) exited unexpectedly"; either is most often the out-of-memory killer's SIGKILL.
    oom = "; a worker killed outright is most often the out-of-memory killer's doing" if (
        what.endswith("Killed") or what.endswith("exited unexpectedly")) else ""
    kept = checkpoint.completed(ckpt_dir)
    resume = f"; the checkpoint {kept[-1]} is intact" if kept else ""
    return (f"a data-loading worker died ({what}){oom}; give the job more memory or fewer --workers (now "
            f"{cfg.workers}), then rerun with --resume{resume}")


def _divergence(run: Run, what: str, step: int, lr: float) -> str:
    """The one line a diverged run ends with: where, at what rate, the likely cause, where to resume."""
    cfg, sched = run.cfg, run.sched
    if cfg.warmup == "none" and cfg.global_batch > cfg.base_batch:
        cause = "no warmup at a large batch: use --warmup gradual"
    elif step < sched.warmup_steps:
        cause = "the rate rises too fast or too high: lengthen --warmup-epochs or lower --base-lr"
    else:
        cause = f"the rate is too high for global batch {cfg.global_batch}: lower --base-lr or the batch"
    kept = checkpoint.completed(run.ckpt_dir)
    last = f"; the last good checkpoint {kept[-1]} is intact (--resume continues from it)" if kept else ""
    return f"training diverged: {what} is not finite at step {step}, learning rate {lr:.4g}; likely cause: {cause}{last}"
