"""The test-set evaluation every run reports: a function of the weights, n and the seed only.

BatchNorm's running averages depend on how the global batch was split: each rank updates them from its
own groups, DDP keeps rank 0's (it broadcasts them at every forward) and DeepSpeed keeps each rank's.
So before every evaluation each rank recomputes them, identically, as the average over the same
`--precise-bn` training examples, fed in BN groups of n (precise BN). With `--precise-bn 0` every rank
evaluates with rank 0's running averages, broadcast first, in every mode.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator

from .batchnorm import recompute_statistics
from .config import Config
from .sharding import batch_loader


@torch.no_grad()
def evaluate(cfg: Config, accelerator: Accelerator, model: torch.nn.Module, data,
             micro: int) -> tuple[float, float]:
    """(test error, test loss) over the whole test set, each process taking every W-th example."""
    module = accelerator.unwrap_model(model)
    if cfg.precise_bn:
        recompute_statistics(module, precise_bn_batches(cfg, data, micro, accelerator.device))
    elif accelerator.num_processes > 1:
        for buffer in module.buffers():
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


def precise_bn_batches(cfg: Config, data, micro: int, device: torch.device):
    """The first --precise-bn examples of a permutation fixed by the seed (a whole number of BN groups), with
    epoch 0's augmentation, in passes of the micro-batch; the same on every rank, whatever the split."""
    group = cfg.bn_batch if cfg.bn == "ghost" else micro  # micro-batch BN's function is the micro-batch's
    num_train = cfg.subset or data.num_train
    count = min(cfg.precise_bn, num_train) // group * group
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(cfg.seed))[:count]
    for indices in order.split(micro):
        yield data.train_batch(indices, seed=cfg.seed, epoch=0)[0].to(device)
