"""BatchNorm statistics over n examples, whatever the micro-batch (the paper's rule 3).

The paper computes BN per worker over n = 32 examples; n is part of the loss being optimized. Ghost
BN keeps that function when a device holds a bigger micro-batch: the micro-batch is cut into
consecutive groups of n and each group is normalized with its own statistics. Neither torch nor timm
ships this (SyncBatchNorm does the opposite), hence the module here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from consecutive groups of `group_size` examples.

    Running statistics are updated once per group, in order, exactly as if the groups had been fed
    one by one: a micro-batch of 4n gives the same running averages as 4 micro-batches of n.
    """

    def __init__(self, num_features: int, group_size: int = 32, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.group_size
        if not self.training or x.shape[0] == n:
            return super().forward(x)
        if x.shape[0] % n:
            raise UserError(f"ghost BatchNorm got a batch of {x.shape[0]}, not a multiple of --bn-batch {n}")
        N, C, H, W = x.shape
        # A (groups, C, n, H, W) view: instance norm over its "spatial" dims (n, H, W) is exactly BN per
        # group, in one fused kernel and without copying x.
        xg = x.view(N // n, n, C, H, W).transpose(1, 2)
        y = F.instance_norm(xg, weight=self.weight, bias=self.bias, eps=self.eps)
        if self.track_running_stats:
            self._update_running_stats(x.detach().view(N // n, n, C, H * W))
        return y.transpose(1, 2).reshape(N, C, H, W)

    @torch.no_grad()
    def _update_running_stats(self, xg):
        # Per-group sums are ~20x cheaper than var_mean over the strided view; float64 for the difference.
        count = xg.shape[1] * xg.shape[3]
        s1 = xg.sum(dim=3).sum(dim=1).double()
        s2 = (xg * xg).sum(dim=3).sum(dim=1).double()
        mean = s1 / count
        var = (s2 - s1 * mean) / (count - 1)  # unbiased, as BatchNorm's running variance
        groups, m = xg.shape[0], self.momentum if self.momentum is not None else 0.1
        # r <- (1-m) r + m x_g for g = 0..G-1, in closed form.
        w = m * (1 - m) ** torch.arange(groups - 1, -1, -1, dtype=torch.float64, device=mean.device)
        decay = (1 - m) ** groups
        self.running_mean.mul_(decay).add_((w[:, None] * mean).sum(0).to(self.running_mean.dtype))
        self.running_var.mul_(decay).add_((w[:, None] * var).sum(0).to(self.running_var.dtype))
        self.num_batches_tracked.add_(groups)


def convert_batchnorm(model: nn.Module, mode: str, group_size: int) -> nn.Module:
    """Swap every BatchNorm2d for the chosen semantics, keeping its parameters and buffers.

    ghost: statistics over groups of `group_size`; micro: the plain micro-batch (unchanged);
    sync: torch's SyncBatchNorm across all devices (a different function from the paper's).
    """
    if mode == "micro":
        return model
    if mode == "sync":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if mode != "ghost":
        raise UserError(f"--bn {mode!r} is not one of ghost, micro, sync")
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            ghost = GhostBatchNorm2d(child.num_features, group_size, eps=child.eps, momentum=child.momentum,
                                     affine=child.affine, track_running_stats=child.track_running_stats)
            ghost.load_state_dict(child.state_dict())
            setattr(model, name, ghost)
        else:
            convert_batchnorm(child, mode, group_size)
    return model
