"""Checkpoints through Accelerate's `save_state`, made atomic and verifiable.

Each checkpoint is written to a temporary folder, synced to disk and renamed, so a run killed at any
moment leaves the previous checkpoint whole. It holds a copy of the run's metrics.jsonl up to it, from
which a damaged log is rebuilt on resume. `progress.json`, written last, records the step, the
configuration, the run's history of splits (`segments`) and a SHA-256 of every file; a checkpoint whose
files no longer match, or whose progress.json is gone, is skipped, with a warning, for the one before it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
from pathlib import Path

from accelerate import Accelerator

from ..errors import UserError, write_failure
from .config import Config
from .runfolder import METRICS as LOG  # the run's log up to the checkpoint
from .runfolder import CONFIG, PROGRESS, Mode, Progress


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")) + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != PROGRESS}


def save(accelerator: Accelerator, folder: Path, step: int, progress: Progress, keep: int, log: Path) -> Path:
    """Save model, optimizer and RNG states, a copy of the metrics `log` and `progress` as checkpoint `step`;
    keep the newest `keep`.

    A failed write (a full disk, a file-size limit) removes the partial folder and raises a UserError naming
    the cause and the previous checkpoint, which is left intact.
    """
    final, tmp = folder / f"step_{step:08d}", folder / f".tmp_step_{step:08d}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))  # every rank writes its own RNG state
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.copyfile(log, tmp / LOG)
            (tmp / PROGRESS).write_text(dataclasses.replace(progress, files=_manifest(tmp)).to_json())
            _fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_tree(folder)
            for old in completed(folder)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except Exception as e:  # safetensors and torch raise their own types for a full disk, not OSError
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(f"checkpoint {final}", e, folder) from None
    accelerator.wait_for_everyone()
    return final


def write_failed(what: str, e: Exception, folder: Path) -> UserError:
    """The one line for a failed write of `what` into a run whose checkpoints are in `folder`: the cause, the
    newest checkpoint (intact: each is renamed into place only when whole) and the fix."""
    cause, fix = write_failure(e, folder.parent)
    previous = completed(folder)
    kept = f"the previous checkpoint {previous[-1]} is intact; " if previous else ""
    return UserError(f"could not write {what}: {cause}; {kept}{fix}, then rerun with --resume")


def replace_file(path: Path, data: str | bytes, folder: Path) -> None:
    """Write `path` whole or not at all (a temporary file renamed over it); a failure leaves the old file and
    no temporary one, and raises `write_failed` for the run whose checkpoints are in `folder`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failed(str(path), e, folder) from None


def completed(folder: Path) -> list[Path]:
    """Checkpoints, oldest first: every step_* folder (a save renames its temporary folder only when
    complete, so one without its progress.json is damaged, not unfinished, and fails `problem`)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if p.is_dir())


def problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be used, or None when every file matches its recorded digest."""
    try:
        files = Progress.from_json((path / PROGRESS).read_bytes()).files
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {PROGRESS}: {type(e).__name__}"
    if LOG not in files:
        return f"it holds no copy of {LOG} (an older largebatch wrote it)"
    for name, digest in files.items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if _digest(path / name) != digest:
            return f"{name} does not match its recorded checksum"
    return None


def latest_usable(folder: Path) -> tuple[Path, Progress] | None:
    """The newest checkpoint that verifies, warning about each newer one that does not."""
    for path in reversed(completed(folder)):
        why = problem(path)
        if why is None:
            return path, Progress.from_json((path / PROGRESS).read_bytes())
        print(f"warning: skipping checkpoint {path}: {why}; trying the one before it", file=sys.stderr)
    return None


def resume_point(cfg: Config, folder: Path, dataset: dict, mode: Mode | str,
                 split: dict) -> tuple[Path | None, Progress]:
    """The checkpoint in `folder` to continue from (None: start afresh, from an empty Progress) and its progress.

    Checkpoints without --resume, none that verifies, one of another configuration, one written in
    another training `mode` (a Mode, or its stored value or sentence: ZeRO shards and plain state dicts do
    not load into each other), or on another `split` (world_size, micro_batch, accumulation) of a run that depends on
    it (`Config.split_dependence`): a UserError.
    """
    found = completed(folder)
    if found and not cfg.resume:
        raise UserError(f"{folder.parent} already holds checkpoints; pass --resume to continue that run or "
                        f"choose another --run-dir")
    if not found:
        return None, Progress()
    usable = latest_usable(folder)
    if usable is None:
        raise UserError(f"no checkpoint in {folder} passes verification; move the folder away to start again")
    path, progress = usable
    written, mode = Mode.of(progress.mode), Mode.of(mode)
    if written is not mode:
        raise UserError(f"checkpoint {path} was written under {written.sentence} but this launch is {mode.sentence}; "
                        f"resume it with "
                        f"the launch that wrote it, or take its weights with `largebatch export {folder.parent} "
                        f"OUT.safetensors`")
    changes = check_compatible(path, progress, cfg, dataset)  # first: another global batch is no other split
    _check_split(path, progress, cfg, split)
    if changes:
        print(f"warning: resuming {path} with changes allowed by --allow-change: {', '.join(changes)}",
              file=sys.stderr)
    return path, progress


def check_compatible(path: Path, progress: Progress, cfg: Config, dataset: dict) -> list[str]:
    """Refuse a checkpoint of another configuration or data set unless --allow-change names the difference.

    Returns the allowed differences, for the caller to report.
    """
    now = cfg.trajectory()
    changed = {k: (v, now[k]) for k, v in progress.config.items() if k in now and v != now[k]}
    if progress.dataset != dataset:
        changed["dataset"] = (progress.dataset, dataset)
    refused = {k: v for k, v in changed.items() if k not in cfg.allowed_changes()}
    if refused:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise UserError(f"checkpoint {path} was written by another configuration ({what}); resume with the same "
                        f"options, choose another --run-dir, or pass --allow-change "
                        f"{','.join(refused)} to continue with the change")
    return [f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()]


def split_text(split: dict) -> str:
    return f"{split['world_size']} processes x micro-batch {split['micro_batch']} x {split['accumulation']} accumulation steps"


def _check_split(path: Path, progress: Progress, cfg: Config, split: dict) -> None:
    """A different split of the same global batch: allowed and announced when the run does not depend on
    it, refused (unless --allow-change split) when it does."""
    before = progress.segments[-1]
    if all(before[k] == v for k, v in split.items()):
        return
    change = f"{split_text(before)} -> {split_text(split)}"
    why = cfg.split_dependence()
    if why and "split" not in cfg.allowed_changes():
        raise UserError(f"checkpoint {path} was trained on another split ({change}) and {why}, so the split shapes "
                        f"the run; resume on the same split, or pass --allow-change split")
    print(f"note: resuming {path} on another split of global batch {cfg.global_batch}: {change}"
          f"{'' if why else ' (the trajectory does not depend on it)'}; recorded in {CONFIG}'s segments",
          file=sys.stderr)
