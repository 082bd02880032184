"""largebatch: the large-minibatch SGD recipe of Goyal et al. 2017 on Accelerate and timm.

Two halves: `largebatch.training` trains (configuration, the recipe's rules, data, models, the engine)
and `largebatch.tools` works on runs (sweeps, reports, the cluster planner, figures, the command line).
Tools import training; training never imports tools.
"""
from .errors import UserError
from .training import models  # noqa: F401  (registers the small ResNets with timm)
from .training.config import Config, parse_config
from .training.schedule import Schedule, lr_at

__all__ = ["Config", "parse_config", "UserError", "Schedule", "lr_at"]
