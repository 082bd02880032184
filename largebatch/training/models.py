"""Models come from timm; two small ResNets for 28x28 and 32x32 images are registered with it."""
from __future__ import annotations

import timm
import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from ..errors import UserError
from .batchnorm import convert_batchnorm
from .config import Config


def _small_resnet(layers, channels, stem_width, stem_stride, **kwargs) -> ResNet:
    """timm ResNet of BasicBlocks with a 3x3 'deep' stem and no max-pool, for small images.

    With stem_stride 2 the stem's second conv strides, so its first conv still sees every pixel.
    """
    # create_model passes pretrained-weight settings that ResNet itself does not take; there are no weights.
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained_cfg") and k != "cache_dir"}
    model = ResNet(BasicBlock, layers, channels=channels, stem_type="deep", stem_width=stem_width, **kwargs)
    model.conv1[0].stride = (1, 1)
    model.conv1[3].stride = (stem_stride, stem_stride)
    model.maxpool = nn.Identity()
    return model


@register_model
def resnet_fmnist(pretrained: bool = False, **kwargs) -> ResNet:
    """310k parameters; 14x14 after the stem. About 3000 images/s training on 2 CPU cores."""
    return _small_resnet([1, 1, 1, 1], (16, 32, 64, 128), stem_width=8, stem_stride=2, **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18 widths with a stride-1 3x3 stem, the usual CIFAR variant."""
    return _small_resnet([2, 2, 2, 2], (64, 128, 256, 512), stem_width=32, stem_stride=1, **kwargs)


def _create(cfg: Config, num_classes: int, in_chans: int) -> nn.Module:
    """timm.create_model with zero_init_last where the model's constructor takes it."""
    try:
        return timm.create_model(cfg.model, num_classes=num_classes, in_chans=in_chans,
                                 zero_init_last=cfg.zero_init_last)
    except TypeError as e:
        if "zero_init_last" not in str(e):
            raise
    if cfg.zero_init_last:
        raise UserError(f"--model {cfg.model} has no zero-gamma option (timm's zero_init_last); "
                        f"pass --zero-init-last false to train it without")
    return timm.create_model(cfg.model, num_classes=num_classes, in_chans=in_chans)


def memory_format(cfg: Config) -> torch.memory_format:
    """The layout of the model's weights and of every batch fed to it (--channels-last)."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def build_model(cfg: Config, num_classes: int, in_chans: int) -> nn.Module:
    """timm model with the paper's initialization and the configured BatchNorm semantics.

    Zero-gamma for the last BN of each residual block comes from timm's `zero_init_last` (models without
    it, e.g. efficientnet_b0 or convnext_tiny, need --zero-init-last false); the final FC layer is drawn
    from N(0, 0.01) as in the paper.
    """
    if not timm.is_model(cfg.model):
        raise UserError(f"--model {cfg.model!r} is not a timm model; try resnet_fmnist, resnet18_cifar or "
                        f"resnet50 (timm.list_models() lists them all)")
    torch.manual_seed(cfg.seed)
    model = _create(cfg, num_classes, in_chans)
    fc = model.get_classifier()
    if isinstance(fc, nn.Linear):
        nn.init.normal_(fc.weight, std=0.01)
        nn.init.zeros_(fc.bias)
    # Ghost BN's kernels keep whichever layout they are given.
    return convert_batchnorm(model, cfg.bn, cfg.bn_batch).to(memory_format=memory_format(cfg))
