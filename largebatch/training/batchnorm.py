"""BatchNorm statistics over n examples, whatever the micro-batch (the paper's rule 3).

The paper computes BN per worker over n = 32 examples; n is part of the loss being optimized. Ghost
BN keeps that function when a device holds a bigger micro-batch: the micro-batch is cut into
consecutive groups of n and each group is normalized with its own statistics. Neither torch nor timm
ships this (SyncBatchNorm does the opposite), hence the module here.
"""
from __future__ import annotations

import torch
from timm.layers import BatchNormAct2d, convert_sync_batchnorm
from torch import nn

from ..errors import UserError


class _GhostGroups:
    """The group statistics shared by the ghost BatchNorm classes (mixed in before a BatchNorm2d class)."""

    def __init__(self, num_features: int, group_size: int = 32, **kwargs):
        super().__init__(num_features, **kwargs)
        self.group_size = group_size

    def _group_norm(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm2d over x in training groups of `group_size`; over all of x in eval."""
        n = self.group_size
        if not self.training or x.shape[0] == n:
            # BatchNorm2d's own forward, also for BatchNormAct2d, whose forward adds drop + act after it.
            return nn.BatchNorm2d.forward(self, x)
        if x.shape[0] % n:
            raise UserError(f"ghost BatchNorm got a batch of {x.shape[0]}, not a multiple of --bn-batch {n}")
        weight = self.weight if self.affine else torch.ones(x.shape[1], device=x.device)
        bias = self.bias if self.affine else torch.zeros(x.shape[1], device=x.device)
        if x.is_cuda:
            out, mean, var = ghost_norm_fused(x, weight, bias, n, self.eps)
        else:
            out, mean, var = _GhostNorm.apply(x.contiguous(memory_format=_layout(x)), weight, bias, n, self.eps)
        if self.track_running_stats:
            self._update_running_stats(mean, var, n * x[0, 0].numel())
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """Running averages as if the G groups (rows of mean and var) had come one by one, in order:
        for momentum m, (1 - m)^G r + sum_g m (1 - m)^(G-1-g) x_g; for torch's cumulative average
        (momentum None, used by precise BN), the mean over every group since the last reset."""
        G = mean.shape[0]
        new = torch.stack((mean, var * (count / max(count - 1, 1))))  # BN keeps the unbiased variance
        running = (self.running_mean, self.running_var)
        if self.momentum is None:
            seen = self.num_batches_tracked.to(mean.dtype)
            torch._foreach_mul_(running, seen / (seen + G))
            torch._foreach_add_(running, list((new.sum(1) / (seen + G)).to(self.running_mean.dtype)))
        else:
            m = self.momentum
            weights = m * (1 - m) ** torch.arange(G - 1, -1, -1, device=mean.device, dtype=mean.dtype)
            torch._foreach_mul_(running, (1 - m) ** G)
            # Elementwise, not a matmul: autocast would run a matmul in bf16.
            torch._foreach_add_(running, list((new * weights.view(1, G, 1)).sum(1).to(self.running_mean.dtype)))
        self.num_batches_tracked.add_(G)


def _ghost_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n: int, eps: float):
    """BatchNorm's training function over consecutive groups of n, in plain differentiable ops on a grouped
    view (G, n, C, H, W) of x, which exists in either memory layout: (output in x's dtype and layout,
    per-group mean (G, C), biased variance (G, C)). Statistics in fp32, as BatchNorm2d under autocast."""
    g = x.unflatten(0, (-1, n))
    var, mean = torch.var_mean(g.float(), dim=(1, 3, 4), correction=0, keepdim=True)
    scale = torch.rsqrt(var + eps) * weight.float().view(1, 1, -1, 1, 1)
    out = ((g - mean) * scale + bias.float().view(1, 1, -1, 1, 1)).to(x.dtype).flatten(0, 1)
    return out, mean.detach().flatten(1), var.detach().flatten(1)


# On GPUs: the function above compiled (inductor: one fused reduction and one pointwise kernel each way), one
# call for all groups. Each group through cuDNN's BatchNorm in turn ran at 0.91x plain BN's speed on an H200
# (ResNet-50, 224², bf16, NCHW) and 0.61x in channels-last (G small kernels and a concatenation per layer).
# Shapes vary by layer: the first recompile makes them dynamic, so a network compiles it a few times, not per layer.
ghost_norm_fused = torch.compile(_ghost_norm)


def _layout(t: torch.Tensor) -> torch.memory_format:
    """The memory format the ghost kernels run `t` in: its own if channels-last, else contiguous."""
    cl = not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def _grouped(t: torch.Tensor, n: int) -> torch.Tensor:
    """A view (no copy) of an (N, C, H, W) tensor in `_layout(t)` as (N/n groups, rows, C, cols): a group's
    statistics for a channel are over dims 1 and 3."""
    N, C = t.shape[:2]
    if t.is_contiguous():
        return t.view(N // n, n, C, -1)
    return t.permute(0, 2, 3, 1).view(N // n, -1, C, 1)


def _group_sum(t: torch.Tensor, square: bool = False) -> torch.Tensor:
    """The sum (of squares) of a grouped view over its dims 1 and 3, reduced in the order a CPU does fastest:
    a long inner dim first, else the rows first (reductions over a few inner elements are slow; a
    squared copy costs less there than it does on a large spatial map)."""
    if t.shape[3] >= 32:
        inner = torch.linalg.vector_norm(t, dim=3, keepdim=True).square_() if square else t.sum(3, keepdim=True)
        return inner.sum(1, keepdim=True)
    return (t * t if square else t).sum(1, keepdim=True).sum(3, keepdim=True)


class _GhostNorm(torch.autograd.Function):
    """BatchNorm's training function over consecutive groups of n examples, all groups at once, on a grouped
    view of x: per-group statistics from reductions over the view, the normalization written in place into
    the output, and BatchNorm's closed-form backward per group. (Each group through BatchNorm2d in turn
    cost G small kernels per layer and a concatenation; transposing into an instance_norm copied twice.)
    Every full-size temporary is avoided: on CPU a fresh buffer costs its page faults, about as much as the
    arithmetic. Low-precision inputs (bf16/fp16 autocast) are normalized in fp32 and returned in their own
    dtype, as BatchNorm2d does."""

    @staticmethod
    def forward(ctx, x, weight, bias, n: int, eps: float):
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        xg = _grouped(x, n)
        count = xg.shape[1] * xg.shape[3]
        mean = _group_sum(xg.to(compute)).div_(count)
        # Written into a tensor of x's own shape and layout, not returned as a view: the ReLU that follows
        # modifies it in place.
        out = torch.empty_like(x, dtype=compute)
        centered = torch.sub(xg, mean, out=_grouped(out, n))
        var = _group_sum(centered, square=True).div_(count)
        rstd = (var + eps).rsqrt_()
        scale = rstd * weight.to(compute).view(1, 1, -1, 1)
        centered.mul_(scale).add_(bias.to(compute).view(1, 1, -1, 1))  # 2-operand ops: CPU vectorizes them
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.n = n
        G, C = mean.shape[0], mean.shape[2]
        mean, var = mean.view(G, C), var.view(G, C)
        ctx.mark_non_differentiable(mean, var)
        return out.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, grad_out, _mean, _var):
        x, weight, mean, rstd = ctx.saved_tensors
        n, compute = ctx.n, mean.dtype
        xg = _grouped(x, n)
        gy = _grouped(grad_out.contiguous(memory_format=_layout(x)), n)
        count = xg.shape[1] * xg.shape[3]
        grad_x = torch.empty_like(x, dtype=compute)
        gx = _grouped(grad_x, n)
        sum_gy = _group_sum(gy.to(compute))
        sum_gy_x = _group_sum(torch.mul(xg, gy, out=gx))  # gx as scratch
        sum_gy_xhat = (sum_gy_x - mean * sum_gy) * rstd
        scale = rstd * weight.to(compute).view(1, 1, -1, 1)
        # dx = scale (gy - mean(gy) - xhat mean(gy xhat)), as gy * scale + x * a + b per group and channel.
        a = -scale * rstd * sum_gy_xhat / count
        b = -a * mean - scale * sum_gy / count
        torch.mul(gy, scale, out=gx).addcmul_(xg, a).add_(b)
        grad_w = sum_gy_xhat.sum(dim=0).view(-1).to(weight.dtype)
        grad_b = sum_gy.sum(dim=0).view(-1).to(weight.dtype)
        return grad_x.to(x.dtype), grad_w, grad_b, None, None


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
    # ghost: Config.validate admits no other --bn
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
