"""Anchor labelling for a whole batch: IoU >= 0.5 foreground, < 0.4 background, else ignored."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

BACKGROUND = -1
IGNORE = -2


def pad_targets(targets: list[dict], device) -> tuple[Tensor, Tensor]:
    """Pad per-image targets to ``boxes [B, M, 4]`` and ``labels [B, M]`` (label -1 = padding)."""
    m = max([int(t["boxes"].shape[0]) for t in targets] + [1])
    B = len(targets)
    boxes = torch.zeros((B, m, 4), dtype=torch.float32, device=device)
    labels = torch.full((B, m), -1, dtype=torch.int64, device=device)
    for i, t in enumerate(targets):
        n = t["boxes"].shape[0]
        boxes[i, :n] = t["boxes"].to(device=device, dtype=torch.float32)
        labels[i, :n] = t["labels"].to(device)
    return boxes, labels


def batched_iou(gt: Tensor, anchors: Tensor, valid: Tensor) -> Tensor:
    """IoU ``[B, M, N]`` of padded gt boxes ``[B, M, 4]`` with anchors ``[N, 4]``; padding -> -1."""
    B, M, _ = gt.shape
    iou = box_iou(gt.reshape(-1, 4), anchors).reshape(B, M, -1)
    return iou.masked_fill(~valid[:, :, None], -1.0)


def match(iou: Tensor, valid: Tensor, high: float = 0.5, low: float = 0.4,
          allow_low_quality: bool = True) -> Tensor:
    """torchvision Matcher semantics, batched.

    Args:
        iou: ``[B, M, N]`` IoU (padding rows -1). valid: ``[B, M]`` bool, real gt rows.
    Returns:
        ``[B, N]`` int64: matched gt index, -1 background, -2 ignored.
    """
    vals, matches = iou.max(dim=1)
    all_matches = matches.clone()
    matches = matches.masked_fill(vals < low, BACKGROUND)
    matches = matches.masked_fill((vals >= low) & (vals < high), IGNORE)
    if allow_low_quality:
        best = iou.max(dim=2).values  # [B, M]
        is_best = (iou == best[:, :, None]) & valid[:, :, None]
        update = is_best.any(dim=1)
        matches = torch.where(update, all_matches, matches)
    return matches
