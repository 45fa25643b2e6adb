"""Backbone: a ResNet or RegNet body + FPN (P3-P7) built from torchvision's parts; keys match
torchvision's (the body's are those of its ImageNet classification model, without ``fc``).

RegNetX bodies (``regnet_x_400mf`` ... ``regnet_x_3_2gf``, the RetinaNet backbones detectron2 and
mmdetection also ship) are torchvision's ``RegNet`` trunk: grouped 3x3 convolutions, a fraction of
a ResNet's FLOPs (400MF: 0.41 GFLOPs at 224 px against ResNet-18's 1.81; torchvision's top-1 74.9%
with its V2 weights against 69.8%). On a 2-core AVX2 CPU the demo-sized RegNetX-400MF detector
trains 2.4x and runs 2.6x the images/s of the ResNet-18 one, but from scratch it learned less per
epoch (BENCHMARKS.md, "RegNetX bodies").

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
from torchvision.models import regnet, resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")  # trainable from the top down
REGNET_STAGES = ("trunk_output.block4", "trunk_output.block3", "trunk_output.block2", "trunk_output.block1", "stem")


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


def conv_norm_act(layer: nn.Sequential, x: Tensor) -> Tensor:
    """torchvision's ``Conv2dNormActivation`` (conv, norm[, activation]) with ``conv_norm``."""
    out = conv_norm(layer[0], layer[1], x)
    return layer[2](out) if len(layer) > 2 else out


def regnet_block(block: regnet.ResBottleneckBlock, x: Tensor) -> Tensor:
    """torchvision's ``ResBottleneckBlock.forward`` (1x1, grouped 3x3, [SE,] 1x1, projection
    shortcut) with ``conv_norm``."""
    f = block.f
    out = conv_norm_act(f.b, conv_norm_act(f.a, x))
    if hasattr(f, "se"):
        out = f.se(out)
    out = conv_norm_act(f.c, out)
    identity = x if block.proj is None else conv_norm_act(block.proj, x)
    return block.activation(out.add_(identity))


class RegNetBody(nn.Module):
    """torchvision's RegNet ``stem`` and ``trunk_output`` (its classification model's modules and
    keys, without ``avgpool`` and ``fc``); forward returns C3, C4, C5 (strides 8, 16, 32)."""

    def __init__(self, name: str, norm_layer: type[nn.Module] | partial):
        super().__init__()
        net = getattr(regnet, name)(norm_layer=norm_layer)
        self.stem, self.trunk_output = net.stem, net.trunk_output
        self.channels = [stage[-1].f.c[0].out_channels for stage in self.trunk_output][1:]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = conv_norm_act(self.stem, x)
        feats = []
        for stage in self.trunk_output:
            for block in stage:
                x = regnet_block(block, x)
            feats.append(x)
        return feats[1:]


class RegNetFPN(nn.Module):
    """A ``RegNetBody`` and torchvision's ``FeaturePyramidNetwork`` (keys ``body.*``, ``fpn.*``
    as in ``BackboneWithFPN``)."""

    def __init__(self, body: RegNetBody, channels: int, extra_blocks: nn.Module):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.channels, channels, extra_blocks=extra_blocks)
        self.out_channels = channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(OrderedDict(zip(("0", "1", "2"), self.body(x))))


RESNETS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
           "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3]),
           "resnet152": (Bottleneck, [3, 8, 36, 3])}
REGNETS = ("regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf")


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
    """Leave the top ``trainable_layers`` (0..5) stages trainable, as torchvision does (ResNet:
    layer4 ... layer1, conv1 + bn1; RegNet: block4 ... block1, stem)."""
    if isinstance(body, RegNetBody):
        train = REGNET_STAGES[:trainable_layers]
    else:
        train = STAGES[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    for name, p in body.named_parameters():
        if not name.startswith(train):
            p.requires_grad_(False)


def build_backbone(depth: str, v2: bool, norm: str, trainable_layers: int, channels: int = 256,
                   frozen_bn_eps: float = 1e-5) -> nn.Module:
    """ResNet or RegNet body (C3-C5; ``depth`` a key of ``RESNETS`` or one of ``REGNETS``) + FPN
    with ``channels`` channels (torchvision: 256) + P6/P7.

    Follows torchvision: v1 computes P6 from P5 (``LastLevelP6P7(256, 256)``), v2 from C5.
    ``norm``: "frozen_bn" (``FrozenBatchNorm2d`` with ``frozen_bn_eps``) or "bn" (trainable).
    Returns a module whose forward maps ``[B, 3, H, W]`` to an OrderedDict of 5 feature maps.
    """
    norm_layer = partial(FrozenBatchNorm2d, eps=frozen_bn_eps) if norm == "frozen_bn" else nn.BatchNorm2d
    if depth in REGNETS:
        body = RegNetBody(depth, norm_layer)
        freeze_stages(body, trainable_layers)
        c5 = body.channels[-1]
        return RegNetFPN(body, channels, LastLevelP6P7(c5, channels) if v2 else LastLevelP6P7(channels, channels))
    block, layers = RESNETS[depth]
    body = resnet.ResNet(block, layers, norm_layer=norm_layer)  # what torchvision's resnetXX builds
    freeze_stages(body, trainable_layers)
    c5 = body.fc.in_features
    extra = LastLevelP6P7(c5, channels) if v2 else LastLevelP6P7(channels, channels)
    return ResNetFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [c5 // 4, c5 // 2, c5],
                     channels, extra_blocks=extra)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same keys) that also takes groups of a single value: a level of 1x1 with one
    channel per group (``fpn_channels`` 32 at P7 of an input <= 128 px), which torch refuses
    ("Expected more than 1 value per channel"). Such a group normalises to 0, so the output is
    the bias: what the formula gives, and what torch computes for any larger group."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == self.num_groups and x[0, 0].numel() == 1:
            out = x * 0  # keeps the graph (and the input's layout); the gradient to x is 0, as GroupNorm's is here
            return out + self.bias.reshape(1, -1, 1, 1) if self.affine else out
        return super().forward(x)


def group_norm_32():
    """GroupNorm(32, C) factory for the v2 heads."""
    return partial(GroupNorm, 32)
