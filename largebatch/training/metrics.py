"""Per-step and per-evaluation rows to `metrics.jsonl` (always) and W&B (when asked)."""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from accelerate import Accelerator

from ..errors import UserError
from .checkpoint import replace_file, write_failed
from .runfolder import DIVERGED, EPOCH, FINISHED, STATUS, STEP, TEST_ERROR, RunFolder, Summary, is_eval_row


class MetricsLog:
    """Appends JSON rows on the main process; `start` continues from a checkpoint's copy of the log."""

    def __init__(self, path: Path, accelerator: Accelerator, checkpoints: Path):
        self.path, self.accelerator, self.checkpoints = path, accelerator, checkpoints

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
        replace_file(self.path, kept, self.checkpoints)

    def log(self, row: dict, step: int) -> None:
        if self.accelerator.is_main_process:
            line = memoryview((json.dumps(row) + "\n").encode())
            with open(self.path, "ab", buffering=0) as f:  # unbuffered: a failure surfaces here, not at close
                end = f.seek(0, os.SEEK_END)
                try:
                    while line:
                        line = line[f.write(line):]
                except OSError as e:
                    f.truncate(end)  # no half row: the log stays readable (truncating needs no space)
                    raise write_failed(str(self.path), e, self.checkpoints) from None
        self.accelerator.log({k: v for k, v in row.items() if k != STEP}, step=step)


def final_error(evals: list[dict]) -> float:
    """A run's test error as the paper reports it: the median of the evaluations in the last 1/18 of training
    (its last 5 of 90 epochs), those after epoch last - last/18 (at least the last one)."""
    last = evals[-1][EPOCH]
    start = last - last / 18
    return statistics.median(e[TEST_ERROR] for e in evals if e[EPOCH] > start + 1e-9 * last)


def write_summary(run_dir: Path, status: str, message: str | None = None) -> Summary:
    """`summary.json`: the run's outcome ("finished" or "diverged"), its last evaluation and its final error;
    written atomically, last, so its presence means the run is over (`largebatch sweep` skips such runs).
    Returns what it wrote."""
    folder = RunFolder(run_dir)
    _, evals = read_metrics(folder.metrics)
    summary = Summary(status, evals[-1] if evals else {}, final_error(evals) if evals else None, message)
    replace_file(folder.summary, json.dumps(summary.to_dict(), indent=2), folder.checkpoints)
    return summary


def read_summary(run_dir: Path) -> Summary | None:
    """The run's summary.json; None while the run is not over. A damaged one (not the JSON object with a status
    that `write_summary` writes) is None too, with a warning: resuming the run writes it again."""
    path = RunFolder(run_dir).summary
    try:
        summary = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        summary = None
    if isinstance(summary, dict) and summary.get(STATUS) in (FINISHED, DIVERGED):
        return Summary.from_dict(summary)
    print(f"warning: {path} is damaged (not a finished run's summary); taking the run as unfinished: resuming it "
          f"(`largebatch sweep` again, or its command with --resume) writes it again", file=sys.stderr)
    return None


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(per-step rows, per-evaluation rows) of a run's metrics.jsonl; a damaged line is a UserError."""
    steps, evals = [], []
    for number, line in enumerate(Path(path).read_bytes().decode(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f"{path} line {number} is not a JSON row ({line[:40]!r}); resume the run with --resume "
                            f"to rebuild the log from its newest checkpoint") from None
        (evals if is_eval_row(row) else steps).append(row)
    return steps, evals
