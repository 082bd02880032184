"""What every recipe script does: parse the config, build data and model, call the engine."""
from __future__ import annotations

import sys
from typing import Callable

from .config import parse_config
from .engine import train
from .errors import UserError
from .models import build_model


def run_recipe(dataset: str, load_data: Callable[[str], object], argv: list[str] | None = None,
               **defaults) -> dict:
    """Run a recipe from the command line; a UserError becomes one line on stderr and exit status 2."""
    try:
        cfg = parse_config(sys.argv[1:] if argv is None else argv, **defaults)
        data = load_data(cfg.data_dir)
        model = build_model(cfg, data.num_classes, data.in_chans)
        return train(cfg, data, model, dataset)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
