import copy

import pytest
import torch
from torch import nn

from largebatch.training import batchnorm
from largebatch.training.batchnorm import GhostBatchNorm2d, convert_batchnorm
from largebatch.training.config import Config
from largebatch.training.models import build_model


def _bn_pair(group):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(4)
    nn.init.uniform_(ref.weight)
    nn.init.uniform_(ref.bias)
    ghost = GhostBatchNorm2d(4, group)
    ghost.load_state_dict(ref.state_dict())
    return ref, ghost


def test_ghost_bn_normalizes_each_group_with_its_own_statistics():
    ref, ghost = _bn_pair(8)
    x = torch.randn(32, 4, 5, 5) * 3 + 1
    x.requires_grad_(True)
    out = ghost(x)
    expected = torch.cat([ref(chunk) for chunk in x.split(8)])
    assert torch.allclose(out, expected, atol=1e-5)
    # Gradients too: the per-group function, not the whole-batch one.
    g_out = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g_out)
    x2 = x.detach().clone().requires_grad_(True)
    ref2 = _bn_pair(8)[0]
    (gx2,) = torch.autograd.grad(torch.cat([ref2(c) for c in x2.split(8)]), x2, g_out)
    assert torch.allclose(gx, gx2, atol=1e-5)
    assert not torch.allclose(out, _bn_pair(8)[0](x), atol=1e-2)  # differs from whole-batch BN


def test_ghost_running_stats_equal_feeding_groups_one_by_one():
    ref, ghost = _bn_pair(8)
    x = torch.randn(32, 4, 5, 5) * 2 + 3
    ghost(x)
    for chunk in x.split(8):
        ref(chunk)
    assert torch.allclose(ghost.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(ghost.running_var, ref.running_var, atol=1e-5)
    assert int(ghost.num_batches_tracked) == int(ref.num_batches_tracked) == 4
    ghost.eval(), ref.eval()
    assert torch.allclose(ghost(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("momentum", [0.1, None])  # None: the cumulative average precise BN uses
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU (run on one with `device`: docs/benchmarks.md)"))])
# The device's own path (CPU: the one-pass kernels; GPU: the compiled function), and the compiled function
# the GPU uses run on the CPU (inductor's C++ code), so it is checked where no GPU is.
@pytest.mark.parametrize("path", ["native", pytest.param("compiled", marks=pytest.mark.slow)])
def test_ghost_bn_is_plain_bn_group_by_group(layout, dtype, momentum, device, path, monkeypatch):
    """Outputs, input gradients, gamma/beta gradients, running statistics and counters of one ghost call
    equal plain BatchNorm2d applied to each group in turn, in fp32 and under bf16 autocast, for contiguous
    and channels-last inputs, on CPU and GPU; the output keeps the input's layout."""
    if path == "compiled" and device == "cpu":
        monkeypatch.setattr(batchnorm._GhostNorm, "apply", batchnorm.ghost_norm_fused)
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6, momentum=momentum)
    nn.init.uniform_(ref.weight, 0.5, 1.5)
    nn.init.uniform_(ref.bias)
    ghost = GhostBatchNorm2d(6, 8, momentum=momentum)
    ghost.load_state_dict(ref.state_dict())
    ref, ghost = ref.to(device), ghost.to(device)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(32, 6, 5, 5) * 3 + 1).to(device, dtype).contiguous(memory_format=fmt)
    gy = torch.randn(32, 6, 5, 5).to(device, dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = ghost(xa)
        expected = torch.cat([ref(chunk) for chunk in xb.split(8)])
    (out.float() * gy.float()).sum().backward()
    (expected.float() * gy.float()).sum().backward()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    assert out.dtype == expected.dtype == dtype and out.is_contiguous(memory_format=fmt)
    assert torch.allclose(out.float(), expected.float(), **tol)
    assert torch.allclose(xa.grad.float(), xb.grad.float(), **tol)
    for name in ("weight", "bias"):  # sums over 800 examples: relative tolerance
        a, b = getattr(ghost, name).grad, getattr(ref, name).grad
        assert torch.allclose(a, b, rtol=1e-4 if dtype == torch.float32 else 2e-2, atol=1e-3), name
    for name in ("running_mean", "running_var"):  # statistics in fp32 both ways
        assert torch.allclose(getattr(ghost, name), getattr(ref, name), atol=1e-5, rtol=1e-5), name
    assert int(ghost.num_batches_tracked) == int(ref.num_batches_tracked) == 4


def test_convert_keeps_parameters_and_zero_gamma():
    model = build_model(Config(bn="micro"), num_classes=10, in_chans=1)
    before = copy.deepcopy(model.state_dict())
    ghosted = convert_batchnorm(model, "ghost", 16)
    assert not any(type(m) is nn.BatchNorm2d for m in ghosted.modules())
    assert all(m.group_size == 16 for m in ghosted.modules() if isinstance(m, GhostBatchNorm2d))
    for k, v in ghosted.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("model_name", ["resnet_fmnist", "resnet50"])
def test_zero_gamma_on_last_bn_of_every_residual_block(model_name):
    model = build_model(Config(model=model_name), num_classes=10, in_chans=1)
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    for block in blocks:
        last = block.bn3 if hasattr(block, "bn3") else block.bn2
        assert torch.count_nonzero(last.weight) == 0
        assert torch.count_nonzero(block.bn1.weight) == block.bn1.weight.numel()
    off = build_model(Config(model=model_name, zero_init_last=False), num_classes=10, in_chans=1)
    assert torch.count_nonzero(off.layer1[0].bn2.weight) > 0


def test_final_fc_drawn_from_normal_0_001():
    model = build_model(Config(model="resnet50"), num_classes=1000, in_chans=3)
    w = model.get_classifier().weight
    assert abs(w.std().item() - 0.01) < 5e-4
    assert torch.count_nonzero(model.get_classifier().bias) == 0


def test_sync_conversion():
    model = build_model(Config(bn="sync"), num_classes=10, in_chans=1)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) in (nn.BatchNorm2d, GhostBatchNorm2d) for m in model.modules())
