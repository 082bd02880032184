"""`largebatch export RUN_DIR OUT.safetensors`: a run's trained weights as a plain timm state dict.

The newest checkpoint that verifies, whatever wrote it: Accelerate's `model.safetensors` (DDP or one
process) or DeepSpeed's ZeRO shards, consolidated on CPU by DeepSpeed's own `zero_to_fp32`. Ghost BN
layers are BatchNorm2d subclasses with BatchNorm2d's keys, so the file loads with `strict=True` into
`timm.create_model(<model>, num_classes=..., in_chans=...)`; those three are in the file's metadata.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserError, write_failure
from ..training import checkpoint
from ..training import models  # noqa: F401  (registers the small ResNets with timm)
from ..training.runfolder import CONFIG, RunFolder


def trained_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(state dict, the run's config.json, the checkpoint it came from)."""
    folder = RunFolder(run_dir)
    if not folder.config.is_file():
        raise UserError(f"{run_dir} is not a run folder (it has no {CONFIG})")
    cfg = folder.read_config()
    usable = checkpoint.latest_usable(folder.checkpoints)
    if usable is None:
        raise UserError(f"{run_dir} holds no checkpoint that verifies; train (or --resume) it first")
    path = usable[0]
    if (path / "pytorch_model").is_dir():  # DeepSpeed: one folder of ZeRO shards, named by Accelerate
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag="pytorch_model")
    else:
        state = load_file(path / "model.safetensors")
    return {k: v.contiguous() for k, v in state.items()}, cfg, path


def export(run_dir: str | Path, out: str | Path) -> str:
    """Write the run's weights to `out`, checked to load strictly into the run's timm model."""
    state, cfg, path = trained_state(Path(run_dir))
    meta = dict(model=cfg["model"], num_classes=str(cfg["num_classes"]), in_chans=str(cfg["in_chans"]))
    model = timm.create_model(cfg["model"], num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not load into timm's {cfg['model']}: "
                        f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder; name the file to write, e.g. {out / 'model.safetensors'}")
    tmp = out.with_name(out.name + ".tmp")
    try:  # whole or not at all: a temporary file renamed over `out`
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(tmp), metadata=dict(meta, checkpoint=str(path)))
        os.replace(tmp, out)
    except (OSError, SafetensorError) as e:  # safetensors reports the OS's errors in its own type
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause, fix = write_failure(e, out.parent)
        raise UserError(f"cannot write {out}: {cause}; {fix}") from None
    return (f"wrote {out}: {len(state)} tensors from {path}; load it with "
            f"timm.create_model({cfg['model']!r}, num_classes={cfg['num_classes']}, in_chans={cfg['in_chans']})"
            f".load_state_dict(safetensors.torch.load_file({str(out)!r}))")
