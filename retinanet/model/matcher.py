"""Anchor labelling for a whole batch: IoU >= 0.5 foreground, < 0.4 background, else ignored."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_iou

BACKGROUND = -1
IGNORE = -2


def pad_targets(targets: list[dict], device) -> tuple[Tensor, Tensor]:
    """Pad per-image targets to ``boxes [B, M, 4]`` and ``labels [B, M]`` (label -1 = padding).

    ``M`` is the largest box count of the batch, at least 1.
    """
    boxes = pad_sequence([t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4) for t in targets],
                         batch_first=True)
    labels = pad_sequence([t["labels"].to(device=device, dtype=torch.int64).reshape(-1) for t in targets],
                          batch_first=True, padding_value=-1)
    if boxes.shape[1] == 0:
        return F.pad(boxes, (0, 0, 0, 1)), F.pad(labels, (0, 1), value=-1)
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
