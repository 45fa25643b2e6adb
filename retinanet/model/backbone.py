"""ResNet body + FPN (P3-P7) built from torchvision's builders; keys match torchvision's."""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

RESNETS = {"resnet18": resnet.resnet18, "resnet34": resnet.resnet34,
           "resnet50": resnet.resnet50, "resnet101": resnet.resnet101}
STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")  # trainable from the top down


def freeze_stages(body: nn.Module, trainable_layers: int) -> None:
    """Leave the top ``trainable_layers`` (0..5) ResNet stages trainable, as torchvision does."""
    train = STAGES[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
    for name, p in body.named_parameters():
        if not name.startswith(train):
            p.requires_grad_(False)


def build_backbone(depth: str, v2: bool, norm: str, trainable_layers: int, channels: int = 256) -> nn.Module:
    """ResNet body (C3-C5) + FPN with ``channels`` channels (torchvision: 256) + P6/P7.

    Follows torchvision: v1 computes P6 from P5 (``LastLevelP6P7(256, 256)``), v2 from C5.
    Returns a module whose forward maps ``[B, 3, H, W]`` to an OrderedDict of 5 feature maps.
    """
    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    body = RESNETS[depth](weights=None, norm_layer=norm_layer)
    freeze_stages(body, trainable_layers)
    c5 = body.fc.in_features
    extra = LastLevelP6P7(c5, channels) if v2 else LastLevelP6P7(channels, channels)
    return BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [c5 // 4, c5 // 2, c5],
                           channels, extra_blocks=extra)


def group_norm_32():
    """GroupNorm(32, C) factory for the v2 heads."""
    return partial(nn.GroupNorm, 32)
