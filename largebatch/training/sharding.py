"""Which examples each device sees: one shuffle per epoch, shared by all workers (Remark 4), and the
loader that delivers them.

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


class _Batches(torch.utils.data.Dataset):
    """Index tensors turned into (images, labels) by `fetch`, so a DataLoader can decode in workers."""

    def __init__(self, fetch, index_lists):
        self.fetch, self.index_lists = fetch, index_lists

    def __len__(self):
        return len(self.index_lists)

    def __getitem__(self, k):
        return self.fetch(self.index_lists[k])


def batch_loader(fetch, index_lists: list[torch.Tensor], workers: int) -> torch.utils.data.DataLoader:
    """A loader yielding `fetch(indices)` for each index tensor in order, decoded in `workers` processes."""
    return torch.utils.data.DataLoader(_Batches(fetch, index_lists), batch_size=None, num_workers=workers,
                                       pin_memory=torch.cuda.is_available())
