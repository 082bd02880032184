"""Per-step and per-evaluation rows to `metrics.jsonl` (always) and W&B (when asked)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from accelerate import Accelerator

from ..errors import UserError


class MetricsLog:
    """Appends JSON rows on the main process; `start` continues from a checkpoint's copy of the log."""

    def __init__(self, path: Path, accelerator: Accelerator):
        self.path, self.accelerator = path, accelerator

    def start(self, saved: Path | None) -> None:
        """Begin the log afresh (`saved` None) or continue the one `saved` in a checkpoint: rows written after
        the checkpoint are dropped, and a log that no longer begins with the saved rows (truncated, edited,
        deleted) is rebuilt from them, with a warning."""
        if not self.accelerator.is_main_process:
            return
        kept = saved.read_bytes() if saved else b""
        current = self.path.read_bytes() if self.path.exists() else b""
        if current[:len(kept)] == kept:
            with open(self.path, "r+b" if self.path.exists() else "wb") as f:
                f.truncate(len(kept))
            return
        print(f"warning: {self.path} does not match checkpoint's copy of it ({len(current)} bytes, "
              f"{len(kept)} saved); rebuilt from {saved}", file=sys.stderr)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(kept)
        os.replace(tmp, self.path)

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
    """(per-step rows, per-evaluation rows) of a run's metrics.jsonl; a damaged line is a UserError."""
    steps, evals = [], []
    for number, line in enumerate(Path(path).read_bytes().decode(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f"{path} line {number} is not a JSON row ({line[:40]!r}); resume the run with --resume "
                            f"to rebuild the log from its newest checkpoint") from None
        (evals if "test_error" in row else steps).append(row)
    return steps, evals
