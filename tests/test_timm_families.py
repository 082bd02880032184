"""Ghost BN and build_model across timm families: plain BatchNorm2d, BatchNormAct2d, no BN at all."""
import copy

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from largebatch.errors import UserError
from largebatch.training.batchnorm import GhostBatchNorm2d, GhostBatchNormAct2d, convert_batchnorm
from largebatch.training.config import Config
from largebatch.training.models import build_model

GROUP = 16
# (model, has zero_init_last): BatchNorm2d, BatchNormAct2d (three families), LayerNorm only.
FAMILIES = [("resnet18", True), ("resnetv2_18", True), ("regnetx_002", True), ("efficientnet_b0", False),
            ("mobilenetv3_small_050", False), ("convnext_atto", False)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These forwards are tiny: with two intra-op threads on a busy CPU, regnetx_002's first pass took
    # seconds of thread hand-off, against 0.1 s on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unconverted(model):
    return [m for m in model.modules() if type(m) in (nn.BatchNorm2d, BatchNormAct2d)]


@pytest.mark.parametrize("name,zero_init_last", FAMILIES)
def test_ghost_model_equals_plain_model_fed_group_by_group(name, zero_init_last):
    ghost = build_model(Config(model=name, bn="ghost", bn_batch=GROUP, zero_init_last=zero_init_last,
                               micro_batch=4 * GROUP), 10, 3).train()
    assert not _unconverted(ghost)
    # Loading into the plain timm model is what an exported checkpoint needs; it also gives the reference.
    plain = timm.create_model(name, num_classes=10).train()
    plain.load_state_dict(ghost.state_dict(), strict=True)
    ghosts = [m for m in ghost.modules() if type(m) in (GhostBatchNorm2d, GhostBatchNormAct2d)]
    assert len(ghosts) == len(_unconverted(plain))  # none for convnext: its LayerNorms stay
    torch.manual_seed(1)
    x = torch.randn(4 * GROUP, 3, 32, 32)
    with torch.no_grad():
        out = ghost(x)
        expected = torch.cat([plain(group) for group in x.split(GROUP)])
    assert torch.allclose(out, expected, atol=1e-5)
    ghost_state = ghost.state_dict()
    for key, value in plain.state_dict().items():
        if "running_" in key or "num_batches_tracked" in key:
            assert torch.allclose(ghost_state[key], value, atol=1e-5), key


@pytest.mark.parametrize("name", [name for name, has_option in FAMILIES if not has_option])
def test_model_without_zero_init_last_needs_the_flag_off(name):
    with pytest.raises(UserError, match="--zero-init-last false") as e:
        build_model(Config(model=name, zero_init_last=True), 10, 3)
    assert "\n" not in str(e.value) and name in str(e.value)


def _bn_act_pair():
    torch.manual_seed(0)
    ref = BatchNormAct2d(4, act_layer=nn.SiLU)
    nn.init.uniform_(ref.weight, -1, 1)
    nn.init.uniform_(ref.bias, -1, 1)
    ghost = convert_batchnorm(nn.Sequential(copy.deepcopy(ref)), "ghost", 8)[0]
    assert type(ghost) is GhostBatchNormAct2d and isinstance(ghost.act, nn.SiLU)
    return ref, ghost


def test_ghost_bn_act_equals_feeding_groups_one_by_one():
    ref, ghost = _bn_act_pair()
    x = (torch.randn(32, 4, 5, 5) * 3 + 1).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = ghost(x)
    expected = torch.cat([ref(chunk) for chunk in x_ref.split(8)])
    assert torch.allclose(out, expected, atol=1e-5)
    g_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, ghost.weight, ghost.bias), g_out)
    ref_grads = torch.autograd.grad(expected, (x_ref, ref.weight, ref.bias), g_out)
    for g, g_ref in zip(grads, ref_grads):
        assert torch.allclose(g, g_ref, atol=1e-5)
    assert torch.allclose(ghost.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(ghost.running_var, ref.running_var, atol=1e-5)
    assert int(ghost.num_batches_tracked) == int(ref.num_batches_tracked) == 4
    ghost.eval(), ref.eval()
    assert torch.allclose(ghost(x), ref(x), atol=1e-5)
    assert not torch.allclose(out, _bn_act_pair()[0].train()(x), atol=1e-2)  # differs from whole-batch BN


def test_conversion_keeps_training_flag_dtype_and_tensors():
    model = nn.Sequential(nn.BatchNorm2d(4), BatchNormAct2d(4)).to(torch.float64).eval()
    weights = [model[0].weight, model[1].running_mean]
    convert_batchnorm(model, "ghost", 8)
    assert [type(m) for m in model] == [GhostBatchNorm2d, GhostBatchNormAct2d]
    assert not any(m.training for m in model)
    assert all(t.dtype == torch.float64 for t in model.state_dict().values() if t.is_floating_point())
    assert model[0].weight is weights[0] and model[1].running_mean is weights[1]


def test_sync_conversion_keeps_bn_act_activation():
    model = convert_batchnorm(nn.Sequential(BatchNormAct2d(4)), "sync", 8)
    assert isinstance(model[0], nn.SyncBatchNorm) and isinstance(model[0].act, nn.ReLU)
