"""SGD as the paper uses it: momentum 0.9, weight decay on conv/linear weights only, never scaled."""
from __future__ import annotations

import torch
from timm.optim import Lars, param_groups_weight_decay

from .config import Config


class PaperSGD(torch.optim.Optimizer):
    """SGD in the paper's eq. 10 form: v <- m*v + lr*(g + wd*w); w <- w - v (Caffe2's update).

    Because the rate sits inside v, a change of rate from lr_prev to lr needs the momentum correction
    of Remark 2, v <- m*(lr/lr_prev)*v + lr*g, to follow the same trajectory as torch.optim.SGD.
    `correction=False` leaves it out, which is what the paper warns against.

    lr_prev is kept with each parameter's v (state["lr"]: the rate v was last built with), not with its
    group: DeepSpeed ZeRO-3 steps one parameter group at a time (the others emptied), so a rate noted on
    the group at every call would be overwritten before that group's own step, losing the correction.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 correction: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.correction = correction

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                if "v" not in state:
                    state["v"] = g.mul(lr)
                else:
                    # Checkpoints written before state["lr"] existed kept the rate on the group.
                    prev_lr = state.get("lr", group.get("prev_lr", lr))
                    ratio = lr / prev_lr if self.correction and prev_lr != 0 else 1.0
                    state["v"].mul_(m * ratio).add_(g, alpha=lr)
                state["lr"] = lr
                p.sub_(state["v"])


def weight_decay(cfg: Config) -> float:
    """The paper keeps lambda fixed; `inverse` is the ablation that scales it by 1/k."""
    if cfg.wd_scaling == "inverse":
        return cfg.weight_decay * cfg.base_batch / cfg.global_batch
    return cfg.weight_decay


def build_optimizer(cfg: Config, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    # timm's grouping puts every 1-D parameter (BN gamma/beta, biases) in a no-decay group.
    groups = param_groups_weight_decay(model, weight_decay(cfg))
    if cfg.optimizer == "lars":
        # timm's LARS adapts only groups with weight decay: the BN and bias group keeps plain SGD.
        return Lars(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, trust_coeff=cfg.lars_trust)
    if cfg.momentum_form == "paper":
        return PaperSGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
