"""Box coder: (dx, dy, dw, dh) deltas relative to anchors, weights (1, 1, 1, 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def encode(gt: Tensor, anchors: Tensor) -> Tensor:
    """Encode ``[..., 4]`` xyxy ``gt`` boxes relative to ``[..., 4]`` ``anchors`` -> deltas ``[..., 4]``."""
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    gw = gt[..., 2] - gt[..., 0]
    gh = gt[..., 3] - gt[..., 1]
    gx = gt[..., 0] + 0.5 * gw
    gy = gt[..., 1] + 0.5 * gh
    return torch.stack([(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], -1)


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Apply ``[..., 4]`` deltas to ``[..., 4]`` xyxy anchors -> xyxy boxes (dw/dh clamped)."""
    anchors = anchors.to(deltas.dtype)
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    dx, dy, dw, dh = deltas.unbind(-1)
    dw = dw.clamp(max=BBOX_XFORM_CLIP)
    dh = dh.clamp(max=BBOX_XFORM_CLIP)
    cx = dx * aw + ax
    cy = dy * ah + ay
    w = torch.exp(dw) * aw
    h = torch.exp(dh) * ah
    # torchvision's BoxCoder arithmetic (c_to_c_h = 0.5 * h); a Python 0.5, not a new device tensor
    # per call (a host-to-device copy): the same exact halving
    hw = 0.5 * w
    hh = 0.5 * h
    return torch.stack([cx - hw, cy - hh, cx + hw, cy + hh], -1)
