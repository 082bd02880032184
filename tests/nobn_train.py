"""Train a BatchNorm-free model through the engine (for the equivalence tests)."""
import sys

import torch
from torch import nn

from largebatch.training.config import parse_config
from largebatch.training.data import load_fashion_mnist
from largebatch.training.engine import train

cfg = parse_config(sys.argv[1:])
torch.manual_seed(cfg.seed)
model = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 13 * 13, 10))
train(cfg, load_fashion_mnist(cfg.data_dir), model, "nobn")
