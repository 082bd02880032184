"""The run folder, the one contract between training and the tools: its file names, the names a run logs,
and the records its JSON files hold. The engine, checkpoints and metrics write it; every tool reads it
through here, so a rename here is a rename everywhere.

    <run dir>/config.json      RunInfo: every option, then what the launch derived from them
    <run dir>/metrics.jsonl    one row per optimizer step and one per evaluation (the names below)
    <run dir>/summary.json     Summary, written last, when the run is over: STATUS and the last evaluation
    <run dir>/checkpoints/step_<8 digits>/progress.json   Progress: where the run stands, and the files' digests
    <run dir>/.lock            held while a run writes the folder (rundir.py)
"""
from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path

CONFIG, METRICS, SUMMARY, CHECKPOINTS, PROGRESS, LOCK = (
    "config.json", "metrics.jsonl", "summary.json", "checkpoints", "progress.json", ".lock")

# The names a run logs, to metrics.jsonl and W&B (also `largebatch dashboard`'s panels).
STEP = "step"  # the optimizer step's index: the row's place in W&B, not sent as a metric
EPOCH, LR, LOSS, EXAMPLES = "epoch", "lr", "loss", "examples"  # every step
GRAD_VAR, GRAD_SQ, NOISE_SCALE = "grad_var", "grad_sq", "noise_scale"  # steps with accumulation (noise.py)
GAIN, TAU = "gain", "tau"  # AdaScale's steps
TRAIN_ERROR, TEST_ERROR, TEST_LOSS = "train_error", "test_error", "test_loss"  # every evaluation
# summary.json (and the W&B run summary): the outcome, and the paper's statistic of a run's test error.
STATUS, FINAL_TEST_ERROR, MESSAGE = "status", "final_test_error", "message"  # MESSAGE: a diverged run's line
FINISHED, DIVERGED = "finished", "diverged"  # the two outcomes a summary records


class Mode(enum.Enum):
    """How model and optimizer state are laid out, which decides the checkpoint format (ZeRO shards and plain
    state dicts do not load into each other). Stored by value; `sentence` is for people."""
    PLAIN = "plain"  # DDP or one process
    ZERO1, ZERO2, ZERO3 = "zero1", "zero2", "zero3"

    @classmethod
    def of_stage(cls, zero: int | None) -> Mode:
        return cls.PLAIN if zero is None else cls(f"zero{zero}")

    @classmethod
    def of(cls, stored: Mode | str | None) -> Mode:
        """A stored value, or the sentence written before modes were stored by value; None (checkpoints older
        than both): plain."""
        if isinstance(stored, Mode) or not stored:
            return stored or cls.PLAIN
        for mode in cls:
            if stored in (mode.value, mode.sentence):
                return mode
        raise ValueError(f"unknown training mode {stored!r}")

    @property
    def zero(self) -> int | None:
        """The ZeRO stage, None when plain."""
        return None if self is Mode.PLAIN else int(self.value[-1])

    @property
    def sentence(self) -> str:
        return "plain (DDP or one process)" if self is Mode.PLAIN else f"DeepSpeed ZeRO stage {self.zero}"


def is_eval_row(row: dict) -> bool:
    """An evaluation's row, not a step's: the two kinds share metrics.jsonl."""
    return TEST_ERROR in row


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The paths of one run's folder."""
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    def started(self) -> bool:
        """Whether a run has written its config.json and begun its metrics.jsonl here."""
        return self.config.is_file() and self.metrics.is_file()

    def read_config(self) -> dict:
        """config.json as the flat mapping it is on disk (RunInfo.to_dict): options and derived values."""
        return json.loads(self.config.read_text())


@dataclasses.dataclass
class RunInfo:
    """config.json: every option (`options`, Config's fields), the data set, and what the launch derived."""
    options: dict
    dataset: str
    num_classes: int
    in_chans: int
    mode: str  # Mode's value
    world_size: int
    micro_batch_used: int
    accumulation_steps: int
    peak_lr: float
    warmup_steps: int
    total_steps: int
    steps_per_epoch: float
    segments: list  # the run's history of splits: from which step it ran on which (Progress.segments)
    sweep: str | None  # the `largebatch sweep` that started it

    def to_dict(self) -> dict:
        """One flat mapping, the options first: the tools read options and derived values alike by name."""
        return dict(self.options, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                     if f.name != "options"})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclasses.dataclass
class Summary:
    """summary.json, written last, when the run is over: its outcome, last evaluation row and final error."""
    status: str  # FINISHED or DIVERGED
    last_eval: dict = dataclasses.field(default_factory=dict)  # the last evaluation's row; none before one
    final_test_error: float | None = None  # metrics.final_error of the evaluations
    message: str | None = None  # a diverged run's one line

    def to_dict(self) -> dict:
        """One flat object (also the W&B run's summary): the status, the last evaluation's keys, the rest."""
        return {STATUS: self.status, **self.last_eval,
                **({FINAL_TEST_ERROR: self.final_test_error} if self.final_test_error is not None else {}),
                **({MESSAGE: self.message} if self.message is not None else {})}

    @classmethod
    def from_dict(cls, raw: dict) -> Summary:
        rest = {k: v for k, v in raw.items() if k not in (STATUS, FINAL_TEST_ERROR, MESSAGE)}
        return cls(raw[STATUS], rest, raw.get(FINAL_TEST_ERROR), raw.get(MESSAGE))


PROGRESS_VERSION = 1  # files without a version are the first format, which this one extends


@dataclasses.dataclass
class Progress:
    """A checkpoint's progress.json: what the saved states do not hold, checked before they are loaded."""
    step: int = 0  # optimizer steps done
    examples: int = 0
    tau: float = 0.0  # progress through the schedule (schedule.py)
    config: dict = dataclasses.field(default_factory=dict)  # Config.trajectory()
    dataset: dict | None = None  # name, num_train, num_classes
    mode: str | None = None  # Mode's value; older files: its sentence, or none at all (Mode.of reads each)
    segments: list = dataclasses.field(default_factory=list)  # as RunInfo.segments
    train_stats: list | None = None  # loss sum, wrong, examples since the last evaluation
    noise: list | None = None  # NoiseScale.state()
    files: dict = dataclasses.field(default_factory=dict)  # SHA-256 of every other file of the checkpoint
    version: int = PROGRESS_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Progress:
        """Any version's progress.json; one without a `files` manifest raises KeyError (it cannot be verified),
        one that is not a JSON object TypeError or ValueError."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise TypeError(f"a JSON {type(raw).__name__}, not an object")
        raw["files"]  # noqa: B018  (a checkpoint without its manifest cannot be verified)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names} | {"version": raw.get("version", 0)})
