"""The Fashion-MNIST recipe, noting every DataLoader worker start (its pid) in the file STARTS names."""
import os

from largebatch.training import sharding
from largebatch.training.recipes import run_recipe


def note_start(worker_id: int) -> None:
    with open(os.environ["STARTS"], "a") as f:
        f.write(f"{os.getpid()}\n")


sharding._ignore_ctrl_c = note_start
run_recipe("fashion_mnist")
