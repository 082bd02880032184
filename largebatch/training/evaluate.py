"""The test-set evaluation every run reports."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from .config import Config
from .sharding import batch_loader


@torch.no_grad()
def evaluate(cfg: Config, accelerator: Accelerator, model: torch.nn.Module, data) -> tuple[float, float]:
    """(test error, test loss) over the whole test set, each process taking every W-th example."""
    model.eval()
    mine = torch.arange(accelerator.process_index, data.num_test, accelerator.num_processes)
    totals = torch.zeros(3, device=accelerator.device)  # wrong, loss sum, count
    for x, y in batch_loader(data.test_batch, mine.split(4 * cfg.micro_batch), cfg.workers):
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        out = model(x).float()
        totals += torch.stack([(out.argmax(1) != y).sum().float(), F.cross_entropy(out, y, reduction="sum"),
                               torch.tensor(float(len(y)), device=out.device)])
    model.train()
    wrong, loss, count = accelerator.reduce(totals, "sum").tolist()
    return wrong / count, loss / count
