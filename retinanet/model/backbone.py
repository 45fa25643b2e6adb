"""ResNet body + FPN (P3-P7) built from torchvision's builders; keys match torchvision's."""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

RESNETS = {"resnet18": resnet.resnet18, "resnet34": resnet.resnet34,
           "resnet50": resnet.resnet50, "resnet101": resnet.resnet101}


def build_backbone(depth: str, v2: bool, norm: str, trainable_layers: int) -> nn.Module:
    """ResNet body (C3-C5) + FPN with 256 channels + P6/P7.

    Follows torchvision: v1 computes P6 from P5 (``LastLevelP6P7(256, 256)``), v2 from C5.
    Returns a module whose forward maps ``[B, 3, H, W]`` to an OrderedDict of 5 feature maps.
    """
    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    body = RESNETS[depth](weights=None, norm_layer=norm_layer)
    c5 = body.fc.in_features
    extra = LastLevelP6P7(c5, 256) if v2 else LastLevelP6P7(256, 256)
    return _resnet_fpn_extractor(body, trainable_layers, returned_layers=[2, 3, 4],
                                 extra_blocks=extra)


def group_norm_32():
    """GroupNorm(32, C) factory for the v2 heads."""
    return partial(nn.GroupNorm, 32)
