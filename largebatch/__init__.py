"""largebatch: the large-minibatch SGD recipe of Goyal et al. 2017 on Accelerate and timm."""
from . import models  # noqa: F401  (registers the small ResNets with timm)
from .config import Config, parse_config
from .errors import UserError
from .schedule import Schedule, lr_at

__all__ = ["Config", "parse_config", "UserError", "Schedule", "lr_at"]
