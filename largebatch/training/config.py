"""One dataclass holds a run's configuration; the command line and YAML files fill it.

Precedence, lowest first: the dataclass defaults, the recipe's defaults, a `--config` YAML file,
then flags on the command line. Every field is a flag: `global_batch` is `--global-batch`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError


def _field(default, help, choices, trajectory: bool):
    return field(default=default, metadata={"help": help, "choices": choices, "trajectory": trajectory})


def _trajectory(default, help, choices=None):
    """An option that shapes the training trajectory: a resumed run must match its checkpoint in it."""
    return _field(default, help, choices, trajectory=True)


def _operational(default, help, choices=None):
    """An option about where and how a run is stored, loaded and logged: free to change on resume."""
    return _field(default, help, choices, trajectory=False)


@dataclass
class Config:
    """Every option of a run. Each field is declared `_trajectory` (it shapes what is trained: a resume
    must match the checkpoint in it) or `_operational` (where and how the run is stored and logged)."""
    # The batch: B = micro_batch x world size x accumulation steps.
    global_batch: int = _trajectory(256, "examples per optimizer step, over all devices and accumulation steps (kn)")
    # Operational: the split of B into devices and accumulation steps does not shape the trajectory, unless
    # `split_dependence` says why it does; a resume checks the split separately (checkpoint.resume_point).
    micro_batch: int = _operational(32, "examples per device per forward/backward pass (at most: a smaller global "
                                    "batch runs B / devices in one pass)")
    epochs: float = _trajectory(90, "training length in epochs, counted in examples: epochs x N examples, in whole "
                                "optimizer steps of the global batch")
    # The paper's recipe.
    base_lr: float = _trajectory(0.1, "learning rate at --base-batch; scaled linearly to the global batch")
    base_batch: int = _trajectory(256, "batch size that --base-lr belongs to")
    lr_scaling: str = _trajectory("linear", "how the rate grows with the batch: linear (the paper's rule, eta x "
                                  "kn/256); sqrt (eta x sqrt(kn/256)) and none (eta) are Table 2a's ablations",
                                  ["linear", "sqrt", "none"])
    warmup: str = _trajectory("gradual", "warmup kind (paper: gradual)", ["gradual", "constant", "none"])
    warmup_epochs: float = _trajectory(5, "warmup length in epochs (of N examples), rounded to optimizer steps")
    schedule: str = _trajectory("step", "decay after warmup: step (/10 at 1/3, 2/3, 8/9) or cosine",
                                ["step", "cosine"])
    bn: str = _trajectory("ghost", "BatchNorm statistics: ghost groups of --bn-batch, the plain micro-batch, or "
                          "synchronized across devices", ["ghost", "micro", "sync"])
    bn_batch: int = _trajectory(32, "examples per BatchNorm group with --bn ghost (the paper's n)")
    precise_bn: int = _trajectory(4096, "training examples over which BatchNorm's statistics are recomputed before "
                                  "every evaluation (precise BN), so the evaluated model does not depend on the "
                                  "split; 0: the running averages of rank 0, as DDP keeps them")
    zero_init_last: bool = _trajectory(True, "start the last BN gamma of every residual block at zero")
    momentum: float = _trajectory(0.9, "SGD momentum")
    nesterov: bool = _trajectory(False, "Nesterov momentum, as the paper trained (it found plain momentum, the "
                                 "form its equations and momentum correction use, equally effective)")
    weight_decay: float = _trajectory(1e-4, "weight decay on conv/linear weights (never on BN or biases)")
    wd_scaling: str = _trajectory("none", "'inverse' scales weight decay by base_batch/global_batch: an ablation "
                                  "of a popular misreading, not the paper", ["none", "inverse"])
    optimizer: str = _trajectory("sgd", "sgd: the paper's; lars: layer-wise trust ratios (You et al. 2017; not on "
                                 "BN or biases); adascale: the rate's gain over --base-lr from measured gradient "
                                 "noise (Johnson et al. 2020), instead of linear scaling and warmup",
                                 ["sgd", "lars", "adascale"])
    # You et al.'s 0.001 goes with LARS's own, much larger global rate; under the linear scaling rule's rate,
    # 0.02 (apex LARC's default) keeps a layer's step in the range plain SGD takes.
    lars_trust: float = _trajectory(0.02, "LARS trust coefficient: a layer's step is the rate times this times its "
                                    "weight norm (over its gradient norm plus weight decay)")
    momentum_form: str = _trajectory("torch", "torch: u=m*u+g, w-=lr*u; paper: eq. 10 with momentum correction",
                                     ["torch", "paper"])
    # What to train on.
    model: str = _trajectory("resnet_fmnist", "timm model name")
    data_dir: str = _operational("", "folder holding the data set files (recipe default if empty)")
    subset: int = _trajectory(0, "train on the first N training examples only (0: all)")
    workers: int = _operational(0, "data-loading worker processes per device (0: load in the training process)")
    decode: str = _operational("cpu", "where JPEG images are decoded: in the loader (libjpeg-turbo) or on the "
                               "training GPU (nvJPEG); recipes/imagenet.py only", ["cpu", "gpu"])
    # Speed options: the same experiment (losses within float rounding of eager NCHW; see README, "What is
    # exact and what drifts"), so a resume may change them.
    # On by default: faster in every case measured (docs/benchmarks.md): GPUs in bf16, and this project's CPU.
    channels_last: bool = _operational(True, "model and batches in channels-last memory format (NHWC); false: NCHW")
    compile: bool = _operational(False, "torch.compile the model (inductor), as `accelerate launch --dynamo_backend "
                                 "inductor` does; either asks Accelerate, and the run header says whether it did")
    seed: int = _trajectory(0, "seed for initialization, data order and augmentation")
    # Where results go.
    run_dir: str = _operational("", "output folder (default runs/<dataset>-B<global batch>-seed<seed>)")
    resume: bool = _operational(False, "continue from the newest checkpoint in --run-dir")
    checkpoint_every: int = _operational(0, "save a checkpoint every N optimizer steps (0: at the end of each epoch)")
    keep_checkpoints: int = _operational(2, "how many checkpoints to keep")
    eval_every: float = _operational(1, "evaluate every N epochs")
    report_to: str = _operational("none", "also log to W&B (offline without WANDB_API_KEY)", ["none", "wandb"])
    wandb_project: str = _operational("largebatch", "W&B project name")
    dry_run: bool = _operational(False, "print the run header (batch split, scaled rate, warmup) and exit")
    allow_change: str = _operational("", "with --resume: comma-separated options (or 'dataset', or 'split': the "
                                     "devices x micro-batch x accumulation of a run that depends on it) the "
                                     "checkpoint may differ in, e.g. global_batch,epochs")

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{_flag(f.name)} {value} must be a finite number")
        for name in ("global_batch", "micro_batch", "base_batch", "bn_batch", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{_flag(name)} {getattr(self, name)} must be positive")
        for name in ("epochs", "base_lr", "eval_every"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{_flag(name)} {getattr(self, name)} must be positive")
        for name in ("warmup_epochs", "weight_decay", "momentum", "subset", "workers", "checkpoint_every", "precise_bn"):
            if getattr(self, name) < 0:
                raise UserError(f"--{_flag(name)} {getattr(self, name)} must not be negative")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"--seed {self.seed} must be between 0 and 2**32 - 1 (4294967295)")
        if self.momentum >= 1:
            raise UserError(f"--momentum {self.momentum} must be below 1")
        unknown = set(self.allowed_changes()) - {f.name for f in dataclasses.fields(self)} - {"dataset", "split"}
        if unknown:
            raise UserError(f"--allow-change names unknown options {', '.join(sorted(unknown))}; use option "
                            f"names such as global_batch,epochs (or dataset, split)")
        if (self.warmup != "none" and self.optimizer != "adascale" and self.global_batch > self.base_batch
                and self.warmup_epochs >= self.epochs):
            raise UserError(f"--warmup-epochs {self.warmup_epochs} must be shorter than --epochs {self.epochs}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise UserError(f"--{_flag(f.name)} {getattr(self, f.name)!r} is not one of {', '.join(choices)}")
        if self.optimizer == "adascale" and self.lr_scaling != "linear":
            raise UserError(f"--lr-scaling {self.lr_scaling} does not apply to --optimizer adascale, whose measured "
                            f"gain sets the rate; use it with sgd or lars")
        if self.optimizer == "lars" and self.momentum_form == "paper":
            raise UserError("--momentum-form paper applies to --optimizer sgd; LARS has its own update")
        if self.optimizer == "lars" and self.weight_decay == 0:
            raise UserError("--optimizer lars with --weight-decay 0 is plain SGD (timm's LARS adapts only the groups "
                            "with weight decay); give a weight decay, e.g. the paper's 1e-4")
        if self.nesterov and self.momentum_form == "paper":
            raise UserError("--momentum-form paper is the paper's eq. 10, plain momentum; with --nesterov use "
                            "--momentum-form torch")
        if self.bn == "ghost" and self.micro_batch % self.bn_batch:
            raise UserError(f"--micro-batch {self.micro_batch} is not a multiple of --bn-batch {self.bn_batch}: "
                            f"ghost BatchNorm needs whole groups; use a micro-batch that is a multiple of it")
        return self

    def split(self, world_size: int) -> tuple[int, int]:
        """(micro-batch, accumulation steps) with B = micro-batch x W x accumulation, refused unless exact.

        --micro-batch is a cap: a global batch below micro-batch x W runs B / W examples per device in
        one pass, so one sweep can span batch sizes on either side of it.
        """
        micro = self.micro_batch
        if self.global_batch < micro * world_size and self.global_batch % world_size == 0:
            micro = self.global_batch // world_size
            if self.bn == "ghost" and micro % self.bn_batch:
                raise UserError(f"--global-batch {self.global_batch} over {world_size} processes gives {micro} "
                                f"examples per device, not a multiple of --bn-batch {self.bn_batch}; use a global "
                                f"batch that is a multiple of {self.bn_batch * world_size}")
        per_step = micro * world_size
        if self.global_batch % per_step:
            raise UserError(f"--global-batch {self.global_batch} is not divisible by --micro-batch "
                            f"{micro} x {world_size} processes = {per_step}; pick a global batch "
                            f"that is a multiple of {per_step}")
        return micro, self.global_batch // per_step

    def split_dependence(self) -> str | None:
        """Why this run's trajectory depends on how the global batch is split into devices and accumulation
        steps; None when only float rounding does (ghost BN, precise BN, no AdaScale), so a resume may change it."""
        if self.optimizer == "adascale":
            return "AdaScale's gain is measured from micro-batch gradients"
        if self.bn in ("micro", "sync"):
            return f"--bn {self.bn} normalizes over the {'micro-batch' if self.bn == 'micro' else 'devices'}"
        if self.precise_bn == 0:
            return "--precise-bn 0 evaluates with rank 0's running BatchNorm statistics"
        return None

    def allowed_changes(self) -> list[str]:
        return [name.strip().replace("-", "_") for name in self.allow_change.split(",") if name.strip()]

    def trajectory(self) -> dict:
        """The fields that shape the training trajectory (not where or how it is logged)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["trajectory"]}


def _kind(f: dataclasses.Field) -> type:
    """The field's declared type (annotations are strings here), not the type of whatever default it has."""
    return {"int": int, "float": float, "str": str, "bool": bool}[f.type]


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line, exit 2 in the recipe) instead of printing usage and exiting."""

    def error(self, message):
        raise UserError(f"{message} (see --help)".replace("\n", "\\n").replace("\r", "\\r"))


def build_parser(defaults: Config) -> argparse.ArgumentParser:
    p = _Parser(description="Train with the large-minibatch recipe of Goyal et al. 2017.")
    p.add_argument("--config", help="YAML file of options (keys as the flags, with - or _)")
    for f in dataclasses.fields(Config):
        default = getattr(defaults, f.name)
        kind = _bool if _kind(f) is bool else _kind(f)
        kwargs = dict(type=kind, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {default})")
        if _kind(f) is bool:
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        elif f.metadata["choices"]:
            kwargs.update(metavar="{" + ",".join(f.metadata["choices"]) + "}")
        p.add_argument(f"--{_flag(f.name)}", **kwargs)
    return p


def load_yaml(path: str) -> dict:
    """Options from a YAML mapping, keys normalized to field names."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold a mapping of option: value, not {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(Config)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"--config {path}: unknown option {key!r}; see --help for the options")
        out[name] = _coerce(name, value, _kind(names[name]), path)
    return out


def _coerce(name, value, kind, source):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and value is None:
        return ""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{source}: option {name!r} = {value!r} should be a {kind.__name__}")
    return value


def parse_config(argv: list[str], **recipe_defaults) -> Config:
    """Config from recipe defaults, an optional --config YAML and the command line; validated."""
    defaults = dataclasses.replace(Config(), **recipe_defaults)
    parser = build_parser(defaults)
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    values = load_yaml(config_file) if config_file else {}
    values.update(args)
    return dataclasses.replace(defaults, **values).validate()
