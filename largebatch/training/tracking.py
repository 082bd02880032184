"""Where a run is tracked besides its folder: the sweep it belongs to, and W&B (set-up and the summary)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from accelerate import Accelerator

from ..errors import UserError
from .config import Config


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
