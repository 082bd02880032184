"""The test-set evaluation every run reports: a function of the weights, n and the seed only.

BatchNorm's running averages depend on how the global batch was split: each rank updates them from its
own groups, DDP keeps rank 0's (it broadcasts them at every forward) and DeepSpeed keeps each rank's.
So before every evaluation each rank recomputes them, identically, as the average over the same
`--precise-bn` training examples, fed in BN groups of n (precise BN). With `--precise-bn 0` every rank
evaluates with rank 0's running averages, broadcast first, in every mode.
"""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import is_compiled_module

from .batchnorm import recompute_statistics
from .config import Config
from .models import memory_format
from .sharding import batch_loader


class Evaluator:
    """Test error and loss over the whole test set, each process taking every W-th example. Its loaders are
    built once: with --workers their processes stay up from one evaluation to the next."""

    def __init__(self, cfg: Config, accelerator: Accelerator, data, micro: int):
        self.cfg, self.accelerator, self.memory_format = cfg, accelerator, memory_format(cfg)
        mine = torch.arange(accelerator.process_index, data.num_test, accelerator.num_processes)
        self.test = batch_loader(data.test_batch, mine.split(4 * cfg.micro_batch), cfg.workers)
        self.precise = batch_loader(functools.partial(_images, data.train_batch, cfg.seed),
                                    precise_bn_indices(cfg, data, micro), cfg.workers) if cfg.precise_bn else None

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> tuple[float, float]:
        """(test error, test loss) of `model`."""
        acc, device, fmt = self.accelerator, self.accelerator.device, self.memory_format
        if is_compiled_module(model):
            # Evaluated eagerly: eval mode, precise BN's cumulative averages and the test batches' shapes would
            # each compile the model anew, for a forward pass that is a small share of the run.
            model = model._orig_mod
        module = acc.unwrap_model(model)
        if self.precise is not None:
            recompute_statistics(module, (x.to(device, memory_format=fmt) for x in self.precise))
        elif acc.num_processes > 1:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)
        model.eval()
        totals = torch.zeros(3, device=device)  # wrong, loss sum, count
        for x, y in self.test:
            x, y = x.to(device, memory_format=fmt), y.to(device)
            out = model(x).float()
            totals += torch.stack([(out.argmax(1) != y).sum().float(), F.cross_entropy(out, y, reduction="sum"),
                                   torch.tensor(float(len(y)), device=out.device)])
        model.train()
        wrong, loss, count = acc.reduce(totals, "sum").tolist()
        return wrong / count, loss / count


def precise_bn_indices(cfg: Config, data, micro: int) -> list[torch.Tensor]:
    """The first --precise-bn examples of a permutation fixed by the seed (a whole number of BN groups), in
    passes of the micro-batch: the same on every rank, whatever the split."""
    group = cfg.bn_batch if cfg.bn == "ghost" else micro  # micro-batch BN's function is the micro-batch's
    num_train = cfg.subset or data.num_train
    count = min(cfg.precise_bn, num_train) // group * group
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(cfg.seed))[:count]
    return list(order.split(micro))


def _images(train_batch, seed: int, indices: torch.Tensor):
    """Training images with epoch 0's augmentation (a module-level function: loader workers receive it)."""
    return train_batch(indices, seed=seed, epoch=0)[0]
