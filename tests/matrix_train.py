"""Train every cell of the engine matrix (tests/test_matrix.py) in one launch: each cell uninterrupted,
then again resumed from its mid-warmup checkpoint, in the same processes (one `accelerate launch` per
engine instead of one per run). A cell the product refuses writes its one-line error to `refused.txt`.

    python -m accelerate.commands.launch ... tests/matrix_train.py CELLS.json
"""
import json
import os
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from largebatch.errors import UserError
from largebatch.training.config import parse_config
from largebatch.training.data import load_fashion_mnist
from largebatch.training.engine import train
from largebatch.training.launch import init_gloo_for_this_attempt
from largebatch.training.models import build_model
from largebatch.training.recipes import RECIPES
from largebatch.training.runfolder import SUMMARY, RunFolder

RESUME_FROM = 2  # the checkpoint after step 2 of 6: mid-warmup


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _train(args, data):
    cfg = parse_config(args, **RECIPES["fashion_mnist"].defaults)
    train(cfg, data, build_model(cfg, data.num_classes, data.in_chans), "fashion-mnist")


def main(cells_file):
    cells = json.loads(Path(cells_file).read_text())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        init_gloo_for_this_attempt()  # ours, so every run's teardown leaves it to the next run
    data = load_fashion_mnist(cells[0]["data_dir"])
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    for cell in cells:
        run, resumed = Path(cell["run_dir"]), Path(cell["run_dir"] + "-resumed")
        args = [*cell["args"], "--data-dir", cell["data_dir"]]
        try:
            _train([*args, "--run-dir", str(run)], data)
        except UserError as e:
            if rank0:
                run.mkdir(parents=True, exist_ok=True)
                (run / "refused.txt").write_text(str(e))
            continue
        if rank0:  # as if killed right after the checkpoint of step RESUME_FROM
            shutil.copytree(run, resumed, ignore=shutil.ignore_patterns(SUMMARY))
            for later in sorted(RunFolder(resumed).checkpoints.glob("step_*")):
                if int(later.name.split("_")[1]) > RESUME_FROM:
                    shutil.rmtree(later)
        _barrier()
        _train([*args, "--run-dir", str(resumed), "--resume"], data)


if __name__ == "__main__":
    main(sys.argv[1])
