"""Which examples each device sees: one shuffle per epoch, shared by all workers (Remark 4).

Hand-written rather than Accelerate's dataloader sharding because the product's promise is stronger
than sharding: the trajectory depends only on (B, n, seed), not on how B is split into devices and
accumulation steps. Each optimizer step takes the next B indices of the epoch's permutation; those B
are cut into consecutive micro-batches, and micro-batch a*W + r goes to rank r at accumulation step a.
Since every micro-batch is a whole number of BN groups, the groups are the same for every split.
"""
from __future__ import annotations

import torch


def epoch_order(num_examples: int, global_batch: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's permutation as a (steps, B) tensor; the remainder that fills no step is dropped."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    steps = num_examples // global_batch
    return torch.randperm(num_examples, generator=g)[: steps * global_batch].view(steps, global_batch)


def micro_batches(step_indices: torch.Tensor, rank: int, world_size: int, accumulation: int) -> list[torch.Tensor]:
    """This rank's micro-batches for one optimizer step, in accumulation order."""
    micro = step_indices.view(world_size * accumulation, -1)
    return [micro[a * world_size + rank] for a in range(accumulation)]
