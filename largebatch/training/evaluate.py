"""The test-set evaluation every run reports, the same function of the weights in every mode.

BatchNorm's running statistics differ between ranks (each sees its own examples). DDP broadcasts rank
0's buffers at every forward, so its evaluation uses rank 0's statistics; DeepSpeed does not broadcast
buffers. The rule here, in every mode: every rank evaluates with rank 0's statistics, broadcast first.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator

from .config import Config
from .sharding import batch_loader


@torch.no_grad()
def evaluate(cfg: Config, accelerator: Accelerator, model: torch.nn.Module, data) -> tuple[float, float]:
    """(test error, test loss) over the whole test set, each process taking every W-th example."""
    if accelerator.num_processes > 1:
        for buffer in accelerator.unwrap_model(model).buffers():
            dist.broadcast(buffer, src=0)
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
