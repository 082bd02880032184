"""BatchNorm statistics over n examples, whatever the micro-batch (the paper's rule 3).

The paper computes BN per worker over n = 32 examples; n is part of the loss being optimized. Ghost
BN keeps that function when a device holds a bigger micro-batch: the micro-batch is cut into
consecutive groups of n and each group is normalized with its own statistics. Neither torch nor timm
ships this (SyncBatchNorm does the opposite), hence the module here.
"""
from __future__ import annotations

import functools

import torch
from timm.layers import BatchNormAct2d, convert_sync_batchnorm
from torch import nn

from ..errors import UserError


class _GhostGroups:
    """The group splitting shared by the ghost BatchNorm classes (mixed in before a BatchNorm2d class)."""

    def __init__(self, num_features: int, group_size: int = 32, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group_size = group_size

    def _group_norm(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm2d over x in training groups of `group_size`; over all of x in eval."""
        n = self.group_size
        # BatchNorm2d's own forward, also for BatchNormAct2d, whose forward adds drop + act after it.
        bn = functools.partial(nn.BatchNorm2d.forward, self)
        if not self.training or x.shape[0] == n:
            return bn(x)
        if x.shape[0] % n:
            raise UserError(f"ghost BatchNorm got a batch of {x.shape[0]}, not a multiple of --bn-batch {n}")
        # Each group through BatchNorm2d in turn: its own statistics, and running averages updated
        # exactly as if the groups came one by one. Groups of a contiguous batch are contiguous, so
        # this costs one concatenation over plain BN; a single instance_norm over a transposed view
        # copies twice and made a CPU training step ~10% slower.
        return torch.cat([bn(group) for group in x.split(n)])


class GhostBatchNorm2d(_GhostGroups, nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from consecutive groups of `group_size` examples.

    Running statistics are updated once per group, in order, exactly as if the groups had been fed
    one by one: a micro-batch of 4n gives the same running averages as 4 micro-batches of n.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._group_norm(x)


class GhostBatchNormAct2d(_GhostGroups, BatchNormAct2d):
    """timm's BatchNormAct2d (BN, then its `drop` and `act`) with GhostBatchNorm2d's group statistics.

    Same parameters, buffers and state-dict keys as BatchNormAct2d, so its weights load into the plain model.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self._group_norm(x)))


def _ghost_of(bn: nn.BatchNorm2d, group_size: int) -> nn.BatchNorm2d:
    """The ghost twin of `bn`, holding its very parameters and buffers (same device, dtype and tensors)."""
    kind = GhostBatchNormAct2d if type(bn) is BatchNormAct2d else GhostBatchNorm2d
    ghost = kind(bn.num_features, group_size, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                 track_running_stats=bn.track_running_stats)
    ghost.load_state_dict(bn.state_dict(keep_vars=True), assign=True)
    if kind is GhostBatchNormAct2d:
        ghost.drop, ghost.act = bn.drop, bn.act
    return ghost.train(bn.training)


def convert_batchnorm(model: nn.Module, mode: str, group_size: int) -> nn.Module:
    """Swap every BatchNorm2d (and timm's BatchNormAct2d) for the chosen semantics, keeping its weights.

    ghost: statistics over groups of `group_size`; micro: the plain micro-batch (unchanged);
    sync: SyncBatchNorm across all devices (a different function from the paper's). Other norm layers
    (LayerNorm, GroupNorm, ...) are left as they are.
    """
    if mode == "micro":
        return model
    if mode == "sync":
        # timm's converter, not torch's: torch's turns a BatchNormAct2d into a bare SyncBatchNorm, dropping its act.
        return convert_sync_batchnorm(model)
    if mode != "ghost":
        raise UserError(f"--bn {mode!r} is not one of ghost, micro, sync")
    for name, child in model.named_children():
        if type(child) in (nn.BatchNorm2d, BatchNormAct2d):
            setattr(model, name, _ghost_of(child, group_size))
        else:
            convert_batchnorm(child, mode, group_size)
    return model


@torch.no_grad()
def recompute_statistics(module: nn.Module, batches) -> None:
    """Replace every BatchNorm layer's running statistics by their plain average over the groups of
    `batches` ("precise BN", as in pycls and Detectron): each BN group (a ghost group, or the whole batch)
    counts once, in order. The layers' momentum and batch counters are left as they were."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # torch's cumulative average: the mean over every group fed since the reset
    training = module.training
    module.train()
    for x in batches:
        module(x)
    module.train(training)
    for bn, (momentum, tracked) in zip(bns, saved):
        bn.momentum = momentum
        bn.num_batches_tracked.copy_(tracked)
