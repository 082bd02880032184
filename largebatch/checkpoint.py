"""Checkpoints through Accelerate's `save_state`, made atomic: written to a temporary folder, synced
to disk, then renamed, so a run killed at any moment leaves the previous checkpoint whole."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

PROGRESS = "progress.json"


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")) + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save(accelerator: Accelerator, folder: Path, step: int, progress: dict, keep: int) -> Path:
    """Save model, optimizer and RNG states plus `progress` as checkpoint `step`; keep the newest `keep`."""
    final, tmp = folder / f"step_{step:08d}", folder / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every rank writes its own RNG state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / PROGRESS).write_text(json.dumps(progress))
        _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_tree(folder)
        for old in completed(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def completed(folder: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if (p / PROGRESS).is_file())


def progress(path: Path) -> dict:
    """What `save` recorded beside the states: step, config and its fingerprint, metrics position."""
    return json.loads((path / PROGRESS).read_text())
