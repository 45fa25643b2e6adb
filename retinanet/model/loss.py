"""RetinaNet losses for a whole batch (focal classification, L1 or GIoU box regression)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from retinanet.model import boxes as box_coder
from retinanet.model.matcher import IGNORE, match_anchors, pad_targets

ALPHA = 0.25  # focal loss alpha; gamma is 2 (torchvision's defaults), built into the formulas below


def _neg_grad(p: Tensor, sp: Tensor) -> Tensor:
    """d/dx of (1-a) p^2 softplus(x) = (1-a) p^2 (2 (1-p) softplus(x) + p); overwrites ``sp``."""
    return sp.mul_(1 - p).mul_(2).add_(p).mul_(p).mul_(p).mul_(1 - ALPHA)


class _FocalLoss(torch.autograd.Function):
    """Weighted sum of torchvision's ``sigmoid_focal_loss`` (alpha 0.25, gamma 2) over ``[B, N, C]``.

    Targets are one-hot at each anchor's label and zero elsewhere, but never materialised: every
    logit gets the target-0 term ``(1-a) p^2 softplus(x)`` and the logit of each foreground
    anchor's class is corrected to ``a (1-p)^2 softplus(-x)``. The correction is computed for every
    anchor (at its label, or class 0 for background) and kept where the anchor is foreground
    (``torch.where``), so no shape depends on the data: no ``nonzero``, which would make a GPU
    wait for the host. The backward recomputes ``p`` from the logits instead of keeping the
    intermediates of the composite formula.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
        fg = labels >= 0  # [B, N]
        p = torch.sigmoid(logits)
        per_anchor = F.softplus(logits).mul_(p).mul_(p).sum(dim=2).mul_(1 - ALPHA)  # [B, N]
        xp = logits.gather(2, labels.clamp(min=0)[:, :, None]).squeeze(2)  # [B, N] each anchor's logit at its label
        pp = torch.sigmoid(xp)
        fix = ALPHA * (1 - pp) ** 2 * F.softplus(-xp) - (1 - ALPHA) * pp**2 * F.softplus(xp)
        per_anchor += torch.where(fg, fix, 0.0)  # where, not a product: a background anchor's fix may be inf
        ctx.save_for_backward(logits, weight, labels, xp)
        return (per_anchor * weight).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        logits, weight, labels, xp = ctx.saved_tensors
        w = (weight * grad)[:, :, None]
        g = _neg_grad(torch.sigmoid(logits), F.softplus(logits)).mul_(w)
        pp = torch.sigmoid(xp)
        d_pos = -ALPHA * (1 - pp) ** 2 * (2 * pp * F.softplus(-xp) + (1 - pp))
        d_neg = _neg_grad(pp, F.softplus(xp))
        fix = torch.where(labels >= 0, (d_pos - d_neg) * w.squeeze(2), 0.0)
        g.scatter_add_(2, labels.clamp(min=0)[:, :, None], fix[:, :, None])
        return g, None, None


def focal_loss(logits: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
    """``sum_{b,a} weight[b,a] * sum_c sigmoid_focal_loss(logits[b,a,c], onehot(labels[b,a])[c])``.

    Args:
        logits: ``[B, N, C]`` fp32. labels: ``[B, N]`` int64 class per anchor, < 0 = no positive
            class (background). weight: ``[B, N]`` per-anchor weight (0 = ignored anchor).
    Returns:
        fp32 scalar.
    """
    return _FocalLoss.apply(logits.contiguous(), weight.to(logits.dtype), labels)


def giou_loss(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """torchvision's ``generalized_box_iou_loss(boxes1, boxes2, reduction="none")`` over ``[..., 4]``
    fp32 xyxy boxes, the same operations in the same order, but the intersection of boxes that do
    not overlap is set to 0 with ``torch.where``, not by boolean-mask indexing (five ``nonzero``s
    per call, forward and backward, each a GPU sync): the same values and gradients."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1 = torch.max(x1, x1g)  # intersection
    ykis1 = torch.max(y1, y1g)
    xkis2 = torch.min(x2, x2g)
    ykis2 = torch.min(y2, y2g)
    overlap = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsctk = torch.where(overlap, (xkis2 - xkis1) * (ykis2 - ykis1), 0.0)
    unionk = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsctk
    iouk = intsctk / (unionk + eps)
    xc1 = torch.min(x1, x1g)  # smallest enclosing box
    yc1 = torch.min(y1, y1g)
    xc2 = torch.max(x2, x2g)
    yc2 = torch.max(y2, y2g)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    return 1 - (iouk - ((area_c - unionk) / (area_c + eps)))


def retinanet_loss(cls_logits: Tensor, bbox_reg: Tensor, anchors: Tensor, targets: list[dict],
                   box_loss: str = "l1") -> dict[str, Tensor]:
    """Losses normalised per image by its foreground count (at least 1), then averaged.

    Anchors labelled ``IGNORE`` (IoU 0.4..0.5, or mostly inside an ignore region; see
    ``retinanet.model.matcher``) have weight 0 in the classification loss and are not counted in
    the normaliser; the box loss is over foreground anchors only, which ignore regions never give.

    Args:
        cls_logits: ``[B, N, C]`` logits over all levels. bbox_reg: ``[B, N, 4]`` deltas.
        anchors: ``[N, 4]`` anchors (padded-batch frame). targets: per image ``boxes`` [M_i, 4]
            and ``labels`` [M_i] in the same frame, optional ``ignore`` [M_i] bool (ignore regions).
        box_loss: "l1" or "giou".
    Returns:
        {"classification": fp32 scalar, "bbox_regression": fp32 scalar}.
    """
    cls_logits = cls_logits.float()
    bbox_reg = bbox_reg.float()
    anchors = anchors.float()
    B = cls_logits.shape[0]
    gt_boxes, gt_labels, gt_ignore = pad_targets(targets, cls_logits.device)
    valid = (gt_labels >= 0) & ~gt_ignore  # [B, M] rows that can be matched
    matches = match_anchors(gt_boxes, anchors, valid, gt_ignore)  # [B, N] (in chunks of boxes when large)
    fg = matches >= 0
    num_fg = fg.sum(dim=1).clamp(min=1).float()  # [B]
    labels = torch.gather(gt_labels, 1, matches.clamp(min=0)).masked_fill(~fg, -1)  # [B, N]
    weight = (matches != IGNORE).float() / (num_fg[:, None] * B)
    cls_loss = focal_loss(cls_logits, labels, weight)

    # every anchor's box loss against its matched box (a background anchor: against itself, so its
    # terms stay finite), summed over the foreground ones: shapes fixed, no nonzero (a GPU sync)
    gt = torch.gather(gt_boxes, 1, matches.clamp(min=0)[:, :, None].expand(-1, -1, 4))  # [B, N, 4]
    gt = torch.where(fg[:, :, None], gt, anchors)
    if box_loss == "l1":
        per = (bbox_reg - box_coder.encode(gt, anchors)).abs().sum(dim=2)  # [B, N]
    elif box_loss == "giou":
        per = giou_loss(box_coder.decode(bbox_reg, anchors), gt)
    else:
        raise ValueError(f"unknown box_loss {box_loss!r}")
    per_image = torch.where(fg, per, 0.0).sum(dim=1)  # [B]
    reg_loss = (per_image / num_fg).mean()
    return {"classification": cls_loss, "bbox_regression": reg_loss}
