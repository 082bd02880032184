"""One optimizer step over gradient-accumulation micro-batches, and what it measured.

Accelerate's `accumulate` skips the all-reduce and the optimizer step until the last micro-batch;
`accelerator.backward` divides each micro-batch's mean loss by the accumulation steps, so the update is
the gradient of the mean loss over all B examples.

The divergence guard: a non-finite gradient stops the run before the optimizer applies it. Under
DeepSpeed the optimizer steps inside `accelerator.backward`, so the guard reads DeepSpeed's global
gradient norm afterwards; in fp32 and fp16 DeepSpeed has already skipped such a step (its overflow
check), in bf16 it has applied it. Either way the run stops before a checkpoint holds it. With fp16's
GradScaler (no DeepSpeed) the gradients are unscaled before they are read, and a non-finite one is the
scaler's own probe of a larger scale: it skips that step and halves the scale. Only a scale that has
fallen below 1 means the gradient is not finite at all.
"""
from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate import Accelerator

from .launch import training_mode
from .runfolder import Mode


class StepStats(NamedTuple):
    """One optimizer step's sums on this rank, or over all ranks once `Summing.wait` returns them."""
    loss_sum: torch.Tensor  # cross-entropy summed over the examples
    wrong: torch.Tensor  # misclassified examples (before the update)
    examples: torch.Tensor
    micro_grad_sq: torch.Tensor  # |first micro-batch's mean gradient|² (noise scale; 0 when not measured)
    batch_grad_sq: torch.Tensor  # |the step's all-reduced mean gradient|²
    stop: torch.Tensor  # ranks that had received a stop signal (SIGTERM, SIGINT) when the step ended

    @property
    def loss(self) -> float:
        return (self.loss_sum / self.examples).item()


class NonFinite(Exception):
    """The loss or the gradient of a step is not finite; `what` says which. The engine sets `taken` to the
    step whose loss it was, when that is not the step being taken."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what, self.taken = what, None


class Summing:
    """A step's statistics on their way to being summed over all ranks, in one all-reduce that runs while the
    next step computes: the step's only collective besides the gradients', so the stop flag rides along with
    the statistics and every rank learns of a stop from the same step. (Waited for at once, gloo's latency
    on 2 CPU processes, ~0.5 ms, was a quarter of the engine's own time per step: docs/benchmarks.md.)"""

    def __init__(self, stats: StepStats, accelerator: Accelerator):
        self._summed = torch.stack(stats)
        # torch's own all_reduce: Accelerate's `reduce` has no asynchronous form.
        self._work = dist.all_reduce(self._summed, async_op=True) if accelerator.num_processes > 1 else None

    def wait(self) -> StepStats:
        """The summed statistics; raises NonFinite if the step's loss was not finite (on every rank alike)."""
        if self._work is not None:
            self._work.wait()
        stats = StepStats(*self._summed)
        if not math.isfinite(stats.loss):
            raise NonFinite("the loss")
        return stats


class Stepper:
    """Takes optimizer steps of `accumulation` micro-batches with a prepared model and optimizer."""

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizer, accumulation: int,
                 measure_noise: bool, memory_format: torch.memory_format = torch.contiguous_format):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.memory_format = memory_format  # the images', as the model's weights (--channels-last)
        self.accumulation, self.measure_noise = accumulation, measure_noise
        self.deepspeed = training_mode(accelerator) is not Mode.PLAIN
        # Listed once: walking the module tree at every step costs ~0.2 ms, 0.25% of a small CPU step.
        self.params = list(model.parameters())
        # Without a loss scaler (fp32, bf16) and DeepSpeed, Accelerate's optimizer only forwards `step` to the
        # torch optimizer, after looking for the lomo_optim package on disk twice (~0.1 ms each, at every
        # call), and `zero_grad` after inspecting its signature: call the torch optimizer itself.
        plain = accelerator.scaler is None and not self.deepspeed and accelerator.distributed_type != "XLA"
        self._torch_optimizer = optimizer.optimizer if plain else optimizer

    def set_lr(self, lr: float) -> None:
        """Write the rate into the optimizer, and check it reached the optimizer that really steps (under
        DeepSpeed: ZeRO's inner torch optimizer) rather than a wrapper's copy."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        inner = self.model.optimizer.optimizer if self.deepspeed else self.optimizer.optimizer
        if any(group["lr"] != lr for group in inner.param_groups):
            raise RuntimeError(f"learning rate {lr} did not reach {type(inner).__name__}")

    def _local_grad_sq(self) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads).float() ** 2 if grads else torch.zeros(())

    def _micro_grad_sq(self) -> torch.Tensor:
        """The first micro-batch's mean gradient, squared: still local (not yet all-reduced), scaled back
        from backward's 1/A and from fp16's loss scale."""
        scaler = self.accelerator.scaler
        return self.accumulation ** 2 * self._local_grad_sq() / (scaler.get_scale() ** 2 if scaler else 1.0)

    def _batch_grad_sq(self) -> torch.Tensor:
        """|the step's all-reduced gradient|², read where the mode leaves it (see the module's docstring)."""
        if self.deepspeed:
            return torch.tensor(float(self.model.get_global_grad_norm()) ** 2)
        if self.accelerator.scaler is not None:
            # Unscaled in place; the scaler's step then uses these and skips a non-finite one.
            self.accelerator.scaler.unscale_(self.optimizer.optimizer)
        return self._local_grad_sq()

    def _loss_scaled(self) -> bool:
        """fp16 with a loss scaler: a non-finite gradient is the scaler's to skip, not a divergence."""
        return self.accelerator.scaler is not None or (self.deepspeed and self.model.fp16_enabled())

    def step(self, batches: Iterator, stop=None) -> Summing:
        """One update from the next `accumulation` micro-batches; its statistics being summed over all ranks,
        with `stop` the number of ranks whose `stop.received` (preempt.StopSignals) was set by then.

        Raises NonFinite before the optimizer applies a non-finite gradient (the all-reduced gradient
        is the same on every rank, so all ranks raise together); `Summing.wait` raises after a step with a
        non-finite loss.
        """
        acc, device = self.accelerator, self.accelerator.device
        zero = torch.zeros((), device=device)
        loss_sum, wrong, examples, micro_sq, batch_sq = zero, zero, zero, zero, zero
        for a in range(self.accumulation):
            x, y = next(batches)
            x = x.to(device, non_blocking=True, memory_format=self.memory_format)
            y = y.to(device, non_blocking=True)
            with acc.accumulate(self.model):
                out = self.model(x)
                loss = F.cross_entropy(out, y)
                acc.backward(loss)
                if a == 0 and self.measure_noise:
                    micro_sq = self._micro_grad_sq()
                if acc.sync_gradients:
                    batch_sq = self._batch_grad_sq()
                    if not torch.isfinite(batch_sq) and not self._loss_scaled():
                        raise NonFinite("the gradient")
                    # Accelerate's optimizer steps and zeroes only here, where gradients are synced.
                    self._torch_optimizer.step()
                    self._torch_optimizer.zero_grad(set_to_none=True)
            loss_sum = loss_sum + loss.detach().float() * len(y)
            wrong = wrong + (out.argmax(1) != y).sum().float()
            examples = examples + len(y)
        if acc.scaler is not None and acc.scaler.get_scale() < 1:
            raise NonFinite("the gradient (the fp16 loss scale fell below 1)")
        stopping = zero + 1 if stop is not None and stop.received is not None else zero  # read last: the latest news
        return Summing(StepStats(loss_sum, wrong, examples, micro_sq.to(device), batch_sq.to(device), stopping), acc)
