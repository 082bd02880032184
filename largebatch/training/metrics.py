"""Per-step and per-evaluation rows to `metrics.jsonl` (always) and W&B (when asked)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from accelerate import Accelerator


class MetricsLog:
    """Appends JSON rows on the main process; `truncate` drops rows written after a checkpoint."""

    def __init__(self, path: Path, accelerator: Accelerator):
        self.path, self.accelerator = path, accelerator

    def start(self, keep_bytes: int) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a+b") as f:
                f.truncate(keep_bytes)

    def synced_size(self) -> int:
        """Bytes written so far, forced to disk: a checkpoint records it to truncate to on resume."""
        if not self.accelerator.is_main_process:
            return 0
        with open(self.path, "ab") as f:
            os.fsync(f.fileno())
            return f.tell()

    def log(self, row: dict, step: int) -> None:
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)


def write_summary(run_dir: Path, status: str, **extra) -> None:
    """`summary.json`: the run's outcome ("finished" or "diverged") and its last evaluation; written
    atomically, last, so its presence means the run is over (`largebatch sweep` skips such runs)."""
    _, evals = read_metrics(run_dir / "metrics.jsonl")
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(dict(status=status, **(evals[-1] if evals else {}), **extra), indent=2))
    os.replace(tmp, run_dir / "summary.json")


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(per-step rows, per-evaluation rows) of a run's metrics.jsonl."""
    steps, evals = [], []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        (evals if "test_error" in row else steps).append(row)
    return steps, evals
