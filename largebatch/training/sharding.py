"""Which examples each device sees, and the loader that delivers them.

Hand-written rather than Accelerate's dataloader sharding because the product's promise is stronger
than sharding: the trajectory depends only on (B, n, seed), not on how B is split into devices and
accumulation steps. Training reads one stream of examples: each epoch's permutation (one shuffle per
epoch, shared by all workers, Remark 4), one after another. Optimizer step s takes stream positions
s·B ... (s+1)·B - 1, so no example is dropped at an epoch's end and a step may span two epochs; "epochs"
count examples (epochs x N), whatever B. The step's B examples are cut into consecutive micro-batches,
and micro-batch a*W + r goes to rank r at accumulation step a. Since every micro-batch is a whole
number of BN groups, the groups are the same for every split.
"""
from __future__ import annotations

import functools
import signal

import torch

from ..errors import UserError


@functools.lru_cache(maxsize=2)  # a loader worker asks for the same epoch's order at every micro-batch
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """Epoch `epoch`'s order of the examples (shared, read-only: index it, do not write to it)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=g)


def stream_steps(num_examples: int, global_batch: int, seed: int, first_step: int,
                 steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(example indices, their epochs), each (steps, B), of optimizer steps first_step ... first_step + steps - 1."""
    start, end = first_step * global_batch, (first_step + steps) * global_batch
    positions = torch.arange(start, end)
    epochs = positions // num_examples
    indices = torch.empty_like(positions)
    for epoch in range(start // num_examples, (end - 1) // num_examples + 1):  # consecutive runs of one epoch
        lo, hi = max(start, epoch * num_examples), min(end, (epoch + 1) * num_examples)
        indices[lo - start:hi - start] = epoch_permutation(num_examples, seed, epoch)[
            lo - epoch * num_examples:hi - epoch * num_examples]
    return indices.view(steps, global_batch), epochs.view(steps, global_batch)


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
        return _made(self.fetch, self.index_lists[k])


class _RankStream(torch.utils.data.Dataset):
    """This rank's micro-batches of optimizer steps first, first + 1, ..., in accumulation order. Item k is
    computed from k by whichever worker fetches it, so one loader, and one set of workers, serves a run."""

    def __init__(self, fetch, num_examples: int, global_batch: int, seed: int, rank: int, world_size: int,
                 accumulation: int, first: int, steps: int):
        self.fetch, self.stream = fetch, (num_examples, global_batch, seed)
        self.split, self.first, self.steps = (rank, world_size, accumulation), first, steps
        self._step = None, None  # (step, its micro-batches' indices and epochs): its other micro-batches come next

    def __len__(self):
        return self.steps * self.split[2]

    def __getitem__(self, k):
        step, a = divmod(k, self.split[2])
        if self._step[0] != step:
            indices, epochs = stream_steps(*self.stream, self.first + step, 1)
            self._step = step, (micro_batches(indices[0], *self.split), micro_batches(epochs[0], *self.split))
        indices, epochs = self._step[1]
        return _made(self.fetch, indices[a], epochs[a])


def _made(fetch, *args):
    """`fetch(*args)`, or the UserError it raised (a bad image), returned: raised in a loader worker, torch would
    re-raise it as "Caught UserError in DataLoader worker process 0." with the worker's traceback inside."""
    try:
        return fetch(*args)
    except UserError as e:
        return e


class _Loader:
    """A DataLoader whose items may be a UserError met making them: iterating raises it as it was."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader

    def __iter__(self):
        for item in self.loader:
            if isinstance(item, UserError):
                raise item
            yield item


def _loader(dataset, workers: int, persistent: bool) -> _Loader:
    return _Loader(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                               persistent_workers=persistent and workers > 0,
                                               pin_memory=torch.cuda.is_available(), worker_init_fn=_ignore_ctrl_c))


def batch_loader(fetch, index_lists: list[torch.Tensor], workers: int) -> _Loader:
    """A loader yielding `fetch(indices)` for each index tensor in order, decoded in `workers` processes that
    stay up between passes (an evaluation reads the same batches every time)."""
    return _loader(_Batches(fetch, index_lists), workers, persistent=True)


def stream_loader(fetch, num_examples: int, global_batch: int, seed: int, rank: int, world_size: int,
                  accumulation: int, first: int, steps: int, workers: int) -> _Loader:
    """A loader yielding `fetch(indices, epochs)` for this rank's micro-batches of optimizer steps
    first ... first + steps - 1, in order."""
    return _loader(_RankStream(fetch, num_examples, global_batch, seed, rank, world_size, accumulation, first, steps),
                   workers, persistent=False)


def _ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl-C reaches the loader's workers too (one process group); they keep loading while the training
    process finishes its step and checkpoints (preempt.py), and end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
