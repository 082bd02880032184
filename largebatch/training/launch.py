"""Launch plumbing: the Accelerator and its process group, torchrun restarts, W&B set-up.

Nothing here is the paper's recipe; it is what makes one `accelerate launch` line train the same way on
CPU processes, GPUs and clusters.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DynamoBackend, InitProcessGroupKwargs, is_compiled_module, parse_flag_from_env

from ..errors import UserError
from .config import Config
from .runfolder import Mode


def init_gloo_for_this_attempt() -> None:
    """The gloo process group, its rendezvous keys namespaced by torchrun's restart count.

    After `--max_restarts` relaunches the workers, the rendezvous store still holds the dead workers'
    addresses; without a fresh namespace gloo may connect to them and fail (pytorch#167288).
    Accelerate keeps a process group that already exists.
    """
    store, rank, world_size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("gloo", store=dist.PrefixStore(f"largebatch/attempt_{attempt}", store),
                            rank=rank, world_size=world_size)


def deepspeed_requested() -> bool:
    """Whether the launch asked for DeepSpeed (`accelerate launch --use_deepspeed`, or a DeepSpeed config)."""
    return parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")


def make_accelerator(cfg: Config) -> Accelerator:
    """An Accelerator that is really distributed on CPU too, and really runs DeepSpeed when asked.

    Without `cpu=True` Accelerate on a CPU-only machine silently trains each launched process alone; but
    `cpu=True` also switches DeepSpeed off (Accelerate enables it only when not cpu), so a DeepSpeed
    launch builds it without, on the gloo process group made here.
    """
    cpu = not torch.cuda.is_available()
    deepspeed = deepspeed_requested()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # Named only when launched: for a lone process the backend would make Accelerate expect a process group.
    handlers = [InitProcessGroupKwargs(backend="gloo")] if cpu and launched > 1 else []
    if cpu and launched > 1 and not dist.is_initialized():
        init_gloo_for_this_attempt()
    if cpu and deepspeed:
        _skip_shared_memory_comm_build()
    # --compile is `accelerate launch --dynamo_backend inductor`; without it the launch's setting stands.
    accelerator = Accelerator(cpu=cpu and not deepspeed, kwargs_handlers=handlers,
                              log_with="wandb" if uses_wandb(cfg) else None,
                              dynamo_backend="inductor" if cfg.compile else None)
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


def _skip_shared_memory_comm_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce at start-up (~95 s here, and it needs
    g++ and ninja) that only its inference all-reduce uses; training's collectives go through
    torch.distributed (gloo). Marking the op unavailable skips the build; no option of DeepSpeed does."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def training_mode(accelerator: Accelerator) -> Mode:
    """The one answer to "which mode am I in?": plain, or DeepSpeed's ZeRO stage."""
    plugin = accelerator.state.deepspeed_plugin
    return Mode.of_stage(None if plugin is None else int(plugin.zero_stage))


def zero_stage(accelerator: Accelerator) -> int | None:
    """The ZeRO stage when DeepSpeed runs, else None."""
    return training_mode(accelerator).zero


def check_deepspeed_engaged(model) -> None:
    """A launch that asked for DeepSpeed must train a DeepSpeed engine: never a silent fallback to DDP."""
    if not deepspeed_requested():
        return
    from deepspeed import DeepSpeedEngine

    if not isinstance(model, DeepSpeedEngine):
        raise UserError(f"the launch asked for DeepSpeed but Accelerate prepared a {type(model).__name__}, not a "
                        f"DeepSpeed engine; launch with accelerate_configs/zero*.yaml (pip install '.[deepspeed]')")


def compile_backend(accelerator: Accelerator) -> str | None:
    """The torch.compile backend Accelerate will compile the model with (--compile, or the launch's
    --dynamo_backend / a config file's dynamo_config), else None."""
    backend = accelerator.state.dynamo_plugin.backend
    return None if backend == DynamoBackend.NO else backend.value.lower()


def check_compiled(model, accelerator: Accelerator) -> None:
    """A run asked to compile must train a compiled model: never a silent fallback to eager."""
    if compile_backend(accelerator) and not is_compiled_module(model):
        raise UserError(f"Accelerate was asked to compile with {compile_backend(accelerator)} but prepared an "
                        f"uncompiled {type(model).__name__}; check the accelerate version (pip install '.')")


def finish(accelerator: Accelerator, callers_group: bool) -> None:
    """Close the trackers; tear the process group down only if the engine made it (gloo aborts at exit
    otherwise), so a caller's group outlives the run and one process can train several times."""
    if callers_group:
        for tracker in accelerator.trackers:
            tracker.finish()
    else:
        accelerator.end_training()


SWEEP = "LARGEBATCH_SWEEP"  # `largebatch sweep` names its sweep to the runs it starts


def sweep_of() -> str | None:
    """The sweep this run belongs to, for its config: the sweep file's name under `largebatch sweep`, the W&B
    sweep id under `wandb agent` (W&B also records it as the run's Sweep), else None."""
    return os.environ.get(SWEEP) or os.environ.get("WANDB_SWEEP_ID") or None


def uses_wandb(cfg: Config) -> bool:
    """--report-to wandb, or launched by `wandb agent` (it sets WANDB_SWEEP_ID): log to that sweep."""
    return cfg.report_to == "wandb" or bool(os.environ.get("WANDB_SWEEP_ID"))


def start_wandb(accelerator: Accelerator, cfg: Config, run_dir: Path, config: dict) -> None:
    """Log to W&B: offline without WANDB_API_KEY (`wandb sync` uploads later); its files, cache and
    offline runs stay inside `run_dir`.

    With a key but no W&B server in reach (a cluster node without internet) the run logs offline too, after
    WANDB_INIT_TIMEOUT (30 s here, not wandb's 90) and one warning line: the training, not its dashboard,
    is what the job is for, and the offline run uploads later. Only an explicit WANDB_MODE=online makes that
    an error.
    """
    import wandb

    explicit = os.environ.get("WANDB_MODE") == "online"
    os.environ.setdefault("WANDB_MODE", "online" if os.environ.get("WANDB_API_KEY") else "offline")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "wandb/cache"), ("WANDB_DATA_DIR", "wandb/data")):
        os.environ.setdefault(var, str((run_dir / sub).resolve()))
    init = dict(project_name=cfg.wandb_project, config=config, init_kwargs={"wandb": {"name": run_dir.name}})
    try:
        accelerator.init_trackers(**init)
    except wandb.errors.CommError as e:
        accelerator.trackers.clear()  # the tracker whose wandb.init failed: finishing it would fail again
        server = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        why = f"W&B at {server} did not answer within {os.environ['WANDB_INIT_TIMEOUT']} s ({str(e).splitlines()[0]})"
        if explicit:
            raise UserError(f"{why}; unset WANDB_MODE=online to log offline when it cannot be reached, or check "
                            f"the network") from None
        print(f"warning: {why}; logging offline instead: upload it later with `wandb sync "
              f"{os.environ['WANDB_DIR']}/wandb/offline-run-*`", file=sys.stderr, flush=True)
        init["init_kwargs"]["wandb"]["mode"] = "offline"  # not WANDB_MODE: wandb's session has read it already
        accelerator.init_trackers(**init)


def log_summary(accelerator: Accelerator, cfg: Config, summary: dict) -> None:
    """The run's summary.json (its status and final error, which `largebatch dashboard` plots) into the W&B
    run's summary; on the main process, where the tracker lives."""
    if uses_wandb(cfg):
        accelerator.get_tracker("wandb", unwrap=True).summary.update(summary)
