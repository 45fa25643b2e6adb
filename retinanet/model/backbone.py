"""ResNet body + FPN (P3-P7) built from torchvision's parts; keys match torchvision's.

The ResNet blocks are torchvision's with one change in ``forward``: a ``FrozenBatchNorm2d`` is
folded into the convolution before it (``conv(x, W * s) + t`` instead of ``conv(x, W) * s + t``,
the same function, in training too, since the frozen scale ``s`` and shift ``t`` are constants),
which saves two passes over every activation. Trainable ``BatchNorm2d`` runs as in torchvision in
training mode; in eval mode it is folded the same way (it then applies its running statistics).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")  # trainable from the top down


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``; a ``FrozenBatchNorm2d``, or a ``BatchNorm2d`` in eval mode (it then
    applies its running statistics: the same affine map), is folded into the conv's weight and bias."""
    if isinstance(norm, FrozenBatchNorm2d):
        weight, bias = norm.weight, norm.bias
    elif isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_var is not None and norm.affine:
        weight, bias = norm.weight, norm.bias
    else:
        return norm(conv(x))
    scale = weight * (norm.running_var + norm.eps).rsqrt()
    shift = bias - norm.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


class BasicBlock(resnet.BasicBlock):
    """torchvision's BasicBlock (same modules and keys) with ``conv_norm``."""

    def forward(self, x: Tensor) -> Tensor:
        out = conv_norm(self.conv1, self.bn1, x).relu_()
        out = conv_norm(self.conv2, self.bn2, out)
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        return out.add_(identity).relu_()


class Bottleneck(resnet.Bottleneck):
    """torchvision's Bottleneck (same modules and keys) with ``conv_norm``."""

    def forward(self, x: Tensor) -> Tensor:
        out = conv_norm(self.conv1, self.bn1, x).relu_()
        out = conv_norm(self.conv2, self.bn2, out).relu_()
        out = conv_norm(self.conv3, self.bn3, out)
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        return out.add_(identity).relu_()


RESNETS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
           "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3]),
           "resnet152": (Bottleneck, [3, 8, 36, 3])}


class ResNetFPN(BackboneWithFPN):
    """torchvision's ``BackboneWithFPN`` (same modules and keys) whose body runs ``conv_norm``."""

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        b = self.body
        x = b.maxpool(conv_norm(b.conv1, b.bn1, x).relu_())
        c3 = b.layer2(b.layer1(x))
        c4 = b.layer3(c3)
        c5 = b.layer4(c4)
        return self.fpn(OrderedDict([("0", c3), ("1", c4), ("2", c5)]))


def freeze_stages(body: nn.Module, trainable_layers: int) -> None:
    """Leave the top ``trainable_layers`` (0..5) ResNet stages trainable, as torchvision does."""
    train = STAGES[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    for name, p in body.named_parameters():
        if not name.startswith(train):
            p.requires_grad_(False)


def build_backbone(depth: str, v2: bool, norm: str, trainable_layers: int, channels: int = 256,
                   frozen_bn_eps: float = 1e-5) -> nn.Module:
    """ResNet body (C3-C5) + FPN with ``channels`` channels (torchvision: 256) + P6/P7.

    Follows torchvision: v1 computes P6 from P5 (``LastLevelP6P7(256, 256)``), v2 from C5.
    ``norm``: "frozen_bn" (``FrozenBatchNorm2d`` with ``frozen_bn_eps``) or "bn" (trainable).
    Returns a module whose forward maps ``[B, 3, H, W]`` to an OrderedDict of 5 feature maps.
    """
    norm_layer = partial(FrozenBatchNorm2d, eps=frozen_bn_eps) if norm == "frozen_bn" else nn.BatchNorm2d
    block, layers = RESNETS[depth]
    body = resnet.ResNet(block, layers, norm_layer=norm_layer)  # what torchvision's resnetXX builds
    freeze_stages(body, trainable_layers)
    c5 = body.fc.in_features
    extra = LastLevelP6P7(c5, channels) if v2 else LastLevelP6P7(channels, channels)
    return ResNetFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [c5 // 4, c5 // 2, c5],
                     channels, extra_blocks=extra)


def group_norm_32():
    """GroupNorm(32, C) factory for the v2 heads."""
    return partial(nn.GroupNorm, 32)
