import pytest
import torch
from torch import nn

from largebatch.errors import UserError
from largebatch.training.config import Config
from largebatch.training.models import build_model
from largebatch.training.optim import PaperSGD, build_optimizer, weight_decay


def test_weight_decay_only_on_conv_and_linear_weights():
    model = build_model(Config(), num_classes=10, in_chans=1)
    opt = build_optimizer(Config(), model, lr=0.1)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            want = isinstance(module, (nn.Conv2d, nn.Linear)) and pname == "weight"
            assert (id(p) in decay) == want, f"{module_name}.{pname}"
    assert len(decay) > 0 and len(decay) < len(names)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 1e-4}


def test_weight_decay_fixed_unless_inverse_ablation():
    assert weight_decay(Config(global_batch=8192)) == 1e-4
    assert weight_decay(Config(global_batch=8192, wd_scaling="inverse")) == 1e-4 / 32


def _trajectory(make_opt, lrs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 1))
    opt = make_opt(model.parameters())
    x, y = torch.randn(64, 5), torch.randn(64, 1)
    for lr in lrs:
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_paper_momentum_form_with_correction_matches_torch_sgd():
    lrs = [0.01 + 0.02 * t for t in range(10)] + [0.2] * 5 + [0.02] * 5  # warmup, plateau, decay
    torch_sgd = _trajectory(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3), lrs)
    corrected = _trajectory(lambda p: PaperSGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3), lrs)
    uncorrected = _trajectory(lambda p: PaperSGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3, correction=False), lrs)
    assert torch.allclose(corrected, torch_sgd, atol=1e-6)
    assert (uncorrected - torch_sgd).abs().max() > 1e-3


def test_paper_form_equals_torch_at_constant_rate_even_without_correction():
    lrs = [0.05] * 10
    torch_sgd = _trajectory(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), lrs)
    uncorrected = _trajectory(lambda p: PaperSGD(p, lr=0.05, momentum=0.9, correction=False), lrs)
    assert torch.allclose(uncorrected, torch_sgd, atol=1e-6)


def test_lars_trust_ratio_by_hand_and_not_on_bn_or_bias():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=True), torch.nn.BatchNorm1d(1))
    cfg = Config(optimizer="lars", weight_decay=0.1, momentum=0.0, lars_trust=0.001)
    opt = build_optimizer(cfg, model, lr=1.0)
    lin, bn = model[0], model[1]
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))  # |w| = 5
        lin.bias.fill_(1.0)
    lin.weight.grad = torch.tensor([[0.6, 0.8]])  # |g| = 1
    lin.bias.grad = torch.tensor([0.5])
    bn.weight.grad, bn.bias.grad = torch.tensor([0.25]), torch.tensor([0.125])
    opt.step()
    # trust = 0.001 * |w| / (|g| + wd * |w|) = 0.005 / 1.5; step = lr * trust * (g + wd * w) = trust * [0.9, 1.2]
    trust = 0.001 * 5 / (1 + 0.1 * 5)
    assert torch.allclose(lin.weight, torch.tensor([[3 - trust * 0.9, 4 - trust * 1.2]]), atol=1e-7)
    # Biases and BN: no trust ratio, no weight decay: a plain SGD step of lr * g.
    assert torch.allclose(lin.bias, torch.tensor([0.5]))
    assert torch.allclose(bn.weight, torch.tensor([0.75])) and torch.allclose(bn.bias, torch.tensor([-0.125]))


def test_lars_refuses_the_paper_momentum_form():
    with pytest.raises(UserError, match="--momentum-form paper applies to --optimizer sgd"):
        Config(optimizer="lars", momentum_form="paper").validate()


def test_nesterov_reaches_sgd_and_lars_and_the_eq10_form_refuses_it():
    model = build_model(Config(), 10, 1)
    for optimizer in ("sgd", "lars"):
        for nesterov in (False, True):
            cfg = Config(optimizer=optimizer, nesterov=nesterov).validate()
            assert all(g["nesterov"] is nesterov for g in build_optimizer(cfg, model, 0.1).param_groups)
    with pytest.raises(UserError, match="--nesterov use --momentum-form torch"):
        Config(nesterov=True, momentum_form="paper").validate()


def test_lars_without_weight_decay_is_refused():
    with pytest.raises(UserError, match="--weight-decay 0 is plain SGD"):
        Config(optimizer="lars", weight_decay=0).validate()


def test_paper_form_corrects_when_groups_step_one_at_a_time():
    """DeepSpeed ZeRO-3 calls step() once per parameter group, the other groups' params emptied for that call
    (stage3._optimizer_step); the correction must still see each parameter's own previous rate."""
    lrs = [0.01 + 0.02 * t for t in range(10)] + [0.02] * 3

    def one_group_at_a_time(params):
        params = list(params)
        opt = PaperSGD([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr=0.1,
                       momentum=0.9, weight_decay=1e-3)
        whole = [g["params"] for g in opt.param_groups]
        step = opt.step

        def zero3_step():
            for group in opt.param_groups:
                for g, ps in zip(opt.param_groups, whole):
                    g["params"] = ps if g is group else []
                step()
            for g, ps in zip(opt.param_groups, whole):
                g["params"] = ps
        opt.step = zero3_step
        return opt

    def torch_sgd(params):
        params = list(params)
        return torch.optim.SGD([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr=0.1,
                               momentum=0.9, weight_decay=1e-3)

    assert torch.allclose(_trajectory(one_group_at_a_time, lrs), _trajectory(torch_sgd, lrs), atol=1e-6)
