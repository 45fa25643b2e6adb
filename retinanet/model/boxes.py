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
    # same arithmetic as torchvision's BoxCoder (c_to_c_h = 0.5 * h)
    hw = torch.tensor(0.5, dtype=cx.dtype, device=cx.device) * w
    hh = torch.tensor(0.5, dtype=cy.dtype, device=cy.device) * h
    return torch.stack([cx - hw, cy - hh, cx + hw, cy + hh], -1)
