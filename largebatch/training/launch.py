"""Launch plumbing: the Accelerator and its process group, torchrun restarts, the training mode, and the
checks that need the launch (world size, device, DeepSpeed, compile).

Nothing here is the paper's recipe; it is what makes one `accelerate launch` line train the same way on
CPU processes, GPUs and clusters.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DynamoBackend, InitProcessGroupKwargs, is_compiled_module, parse_flag_from_env

from ..errors import UserError
from .config import Config
from .runfolder import Mode
from .tracking import uses_wandb


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


def check_compilable(accelerator: Accelerator) -> None:
    """Inductor on a CPU builds C++ kernels for the vector instruction set it picks; with none (a CPU without
    AVX2, or ATEN_CPU_CAPABILITY=default) torch 2.14.1 still emits vector code for the model's layout changes
    and fails to build it, deep inside the first step: refuse before training instead."""
    if compile_backend(accelerator) != "inductor" or accelerator.device.type != "cpu":
        return
    from torch._inductor.cpu_vec_isa import pick_vec_isa  # imports inductor: only when compiling
    if not pick_vec_isa():
        raise UserError(f"--compile on CPU: inductor found no vector instruction set here (ATEN_CPU_CAPABILITY="
                        f"{os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}) and its C++ kernels for this model do "
                        f"not build without one; drop --compile, or unset ATEN_CPU_CAPABILITY on a CPU with AVX2")


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


def check_launch(cfg: Config, accelerator: Accelerator, accumulation: int, measure_noise: bool) -> None:
    """The options' checks that need the launch: its world size, device, precision, DeepSpeed and compile
    (Config.validate has made every other before it); all before anything is written."""
    zero = zero_stage(accelerator)
    if zero is not None and cfg.optimizer in ("lars", "adascale"):
        raise UserError(f"--optimizer {cfg.optimizer} needs each layer's whole gradient, but ZeRO stage {zero} "
                        f"flattens every parameter group into one shard per rank (LARS would take one trust ratio "
                        f"per shard); launch without DeepSpeed (e.g. accelerate_configs/gpu_8.yaml) or use sgd")
    if zero is not None and compile_backend(accelerator):
        raise UserError(f"--compile (or accelerate's --dynamo_backend {compile_backend(accelerator)}) is not supported "
                        f"under DeepSpeed ZeRO stage {zero} here; drop it, or train with DDP (accelerate_configs/gpu_8.yaml)")
    check_compilable(accelerator)
    if cfg.optimizer == "adascale" and not measure_noise:
        raise UserError(f"--optimizer adascale measures gradient noise from micro-batches, so it needs gradient "
                        f"accumulation (now {accumulation}) and no DeepSpeed; use a smaller --micro-batch")
    if cfg.dry_run:
        return
    W, cpu = accelerator.num_processes, accelerator.device.type == "cpu"
    if cfg.bn == "sync" and W == 1:
        accelerator.print("note: --bn sync with one process is plain micro-batch BN")
    if cfg.bn == "sync" and W > 1 and cpu:
        raise UserError("--bn sync needs GPUs (torch's SyncBatchNorm runs only on GPU modules); on CPU use "
                        "--bn ghost, the paper's per-worker BN, or --bn micro")
    if cpu and accelerator.mixed_precision == "fp16" and zero is None:
        raise UserError("--mixed_precision fp16 does nothing on CPU (Accelerate uses neither autocast nor loss "
                        "scaling there, so it would silently train in fp32); use bf16 or no")
    if cpu and accelerator.mixed_precision != "no":
        accelerator.print(f"warning: {accelerator.mixed_precision} on CPU is often 5-40x slower than fp32")
    if zero is not None and accumulation > 1:
        accelerator.print("note: the gradient noise scale is not measured under ZeRO (its gradients are sharded)")
