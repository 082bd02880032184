"""The recipes the library knows: a name, the data set it loads and its defaults over the paper's.

`recipes/<name>.py` scripts are thin launchers of these; `largebatch sweep` and `largebatch noise`
read them here instead of executing the scripts.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable

from ..errors import Stopped, UserError, exit_with
from .config import Config, parse_config
from .data import load_cifar10, load_fashion_mnist
from .engine import train
from .images import JpegImages, load_imagenet
from .models import build_model


@dataclasses.dataclass(frozen=True)
class Recipe:
    dataset: str  # the data set's name in run folders and checkpoints
    load: Callable[[Config], object]  # the data set the options name
    defaults: dict  # over the library's defaults, which are the paper's


RECIPES = {
    # A small timm ResNet on 28x28 images: the recipe's quick proof on a laptop CPU.
    "fashion_mnist": Recipe("fashion-mnist", lambda cfg: load_fashion_mnist(cfg.data_dir),
                            dict(model="resnet_fmnist", micro_batch=256, epochs=12, warmup_epochs=2)),
    "cifar10": Recipe("cifar10", lambda cfg: load_cifar10(cfg.data_dir), dict(model="resnet18_cifar", micro_batch=128, epochs=30)),
    # The paper's headline experiment: ResNet-50, 90 epochs.
    "imagenet": Recipe("imagenet", lambda cfg: load_imagenet(cfg.data_dir, cfg.decode),
                       dict(model="resnet50", micro_batch=32, epochs=90, workers=8)),
}


def recipe_of(program: str) -> tuple[str, Recipe]:
    """The recipe a launch script runs, by its file name: recipes/fashion_mnist.py is `fashion_mnist`."""
    name = Path(program).stem
    if name not in RECIPES:
        raise UserError(f"program {program} is not a largebatch recipe; the recipes are "
                        f"{', '.join(f'recipes/{n}.py' for n in RECIPES)}")
    return name, RECIPES[name]


def run_recipe(name: str, argv: list[str] | None = None) -> dict:
    """Run recipe `name` with command-line options `argv` (default: sys.argv); a UserError or a stop becomes
    one line on stderr and exit status 2, or errors.EXIT_STOPPED for a stop."""
    recipe = RECIPES[name]
    try:
        cfg = parse_config(sys.argv[1:] if argv is None else argv, **recipe.defaults)
        data = recipe.load(cfg)
        if cfg.decode != "cpu" and not isinstance(data, JpegImages):
            raise UserError(f"--decode {cfg.decode} is for JPEG data sets (recipes/imagenet.py); {name} is held "
                            f"in memory")
        model = build_model(cfg, data.num_classes, data.in_chans)
        return train(cfg, data, model, recipe.dataset)
    except (UserError, Stopped) as e:
        exit_with(e)
