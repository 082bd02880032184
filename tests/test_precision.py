"""Mixed precision: bf16 on CPU trains and resumes; fp16 on CPU is refused; fp16's loss scaler is respected."""
import shutil

import pytest
import torch
from accelerate import Accelerator

from conftest import ROOT, launch, step_losses

from largebatch.training.step import Stepper

RECIPE = ROOT / "recipes/fashion_mnist.py"
ARGS = ["--subset", 512, "--global-batch", 128, "--micro-batch", 64, "--epochs", 1, "--checkpoint-every", 2,
        "--keep-checkpoints", 2]


@pytest.mark.slow
def test_bf16_on_cpu_trains_close_to_fp32_and_resumes(tmp_path, small_fmnist):
    args = [*ARGS, "--data-dir", small_fmnist]
    launch(RECIPE, [*args, "--run-dir", tmp_path / "fp32"])
    out = launch(RECIPE, [*args, "--run-dir", tmp_path / "bf16"], ACCELERATE_MIXED_PRECISION="bf16")
    assert "bf16 on CPU is often" in out.stdout
    fp32, bf16 = step_losses(tmp_path / "fp32"), step_losses(tmp_path / "bf16")
    assert len(bf16) == 4 and max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.02, (fp32, bf16)
    assert fp32 != bf16  # autocast really ran
    shutil.rmtree(sorted((tmp_path / "bf16/checkpoints").glob("step_*"))[-1])  # as if killed after step 2
    launch(RECIPE, [*args, "--run-dir", tmp_path / "bf16", "--resume"], ACCELERATE_MIXED_PRECISION="bf16")
    assert step_losses(tmp_path / "bf16") == bf16


@pytest.mark.slow
def test_fp16_on_cpu_is_refused(tmp_path, small_fmnist):
    out = launch(RECIPE, [*ARGS, "--data-dir", small_fmnist, "--run-dir", tmp_path / "r"], check=False,
                 ACCELERATE_MIXED_PRECISION="fp16")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "fp16 does nothing on CPU" in out.stderr.strip().splitlines()[-1]


def _stepper(scale: float | None):
    """A Stepper over a small model, with a torch GradScaler standing in for the one Accelerate makes for fp16
    on a GPU (its backward scales the loss and its optimizer steps through the scaler, as there)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    if scale is not None:
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return Stepper(accelerator, model, optimizer, 2, measure_noise=True), model


def _batches(magnitude: float = 1.0):
    g = torch.Generator().manual_seed(1)
    while True:
        yield magnitude * torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)


def test_guard_and_noise_read_unscaled_gradients_under_a_loss_scaler():
    plain, _ = _stepper(None)
    scaled, _ = _stepper(2.0 ** 12)
    a, b = plain.step(_batches()).wait(), scaled.step(_batches()).wait()
    assert torch.allclose(a.micro_grad_sq, b.micro_grad_sq, rtol=1e-5)
    assert torch.allclose(a.batch_grad_sq, b.batch_grad_sq, rtol=1e-5)


def test_an_overflow_the_scaler_provokes_is_skipped_not_a_divergence():
    stepper, model = _stepper(2.0 ** 126)  # with inputs of ~1e4 the scaled weight gradients overflow fp32
    before = [p.detach().clone() for p in model.parameters()]
    stats = stepper.step(_batches(1e4)).wait()  # no NonFinite: the scaler skips the step and halves its scale
    assert not torch.isfinite(stats.batch_grad_sq)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert stepper.accelerator.scaler.get_scale() == 2.0 ** 125
