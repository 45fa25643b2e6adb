"""RetinaNet losses for a whole batch (focal classification, L1 or GIoU box regression)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from retinanet.model import boxes as box_coder
from retinanet.model.matcher import IGNORE, batched_iou, match, pad_targets


def retinanet_loss(cls_logits: Tensor, bbox_reg: Tensor, anchors: Tensor, targets: list[dict],
                   box_loss: str = "l1") -> dict[str, Tensor]:
    """Losses normalised per image by its foreground count (at least 1), then averaged.

    Args:
        cls_logits: ``[B, N, C]`` logits over all levels. bbox_reg: ``[B, N, 4]`` deltas.
        anchors: ``[N, 4]`` anchors (padded-batch frame). targets: per image ``boxes`` [M_i, 4]
            and ``labels`` [M_i] in the same frame.
        box_loss: "l1" or "giou".
    Returns:
        {"classification": fp32 scalar, "bbox_regression": fp32 scalar}.
    """
    cls_logits = cls_logits.float()
    bbox_reg = bbox_reg.float()
    anchors = anchors.float()
    B, N, C = cls_logits.shape
    gt_boxes, gt_labels = pad_targets(targets, cls_logits.device)
    valid = gt_labels >= 0
    matches = match(batched_iou(gt_boxes, anchors, valid), valid)  # [B, N]
    fg = matches >= 0
    num_fg = fg.sum(dim=1).clamp(min=1).float()  # [B]
    idx = matches.clamp(min=0)
    matched_labels = torch.gather(gt_labels, 1, idx)  # [B, N]
    target = torch.zeros_like(cls_logits)
    target.scatter_(2, matched_labels.clamp(min=0)[:, :, None], fg[:, :, None].float())
    per_anchor = sigmoid_focal_loss(cls_logits, target, reduction="none").sum(dim=2)
    per_anchor = per_anchor * (matches != IGNORE).float()
    cls_loss = (per_anchor.sum(dim=1) / num_fg).mean()

    matched_boxes = torch.gather(gt_boxes, 1, idx[:, :, None].expand(B, N, 4))
    fg_b, fg_a = fg.nonzero(as_tuple=True)
    pred = bbox_reg[fg_b, fg_a]
    anc = anchors[fg_a]
    gt = matched_boxes[fg_b, fg_a]
    if box_loss == "l1":
        per = (pred - box_coder.encode(gt, anc)).abs().sum(dim=1)
    elif box_loss == "giou":
        per = generalized_box_iou_loss(box_coder.decode(pred, anc), gt, reduction="none")
    else:
        raise ValueError(f"unknown box_loss {box_loss!r}")
    per_image = torch.zeros(B, dtype=per.dtype, device=per.device).index_add_(0, fg_b, per)
    reg_loss = (per_image / num_fg).mean()
    return {"classification": cls_loss, "bbox_regression": reg_loss}
