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


# Device types on which the loss picks the foreground anchors with ``nonzero`` and computes their
# terms (the focal loss's correction at the true class, the box loss) on them alone. On a CPU that
# costs nothing, host and device being one, and saves computing those terms for every anchor. On a
# GPU a ``nonzero`` makes the host wait for the device (a sync every step), so there every anchor's
# terms are computed and the background ones dropped with ``torch.where``: no shape depends on the
# data. The two give the same losses up to float rounding (tests/model/test_loss_ignore.py);
# benchmarks/sync_audit.py empties this to audit the accelerators' path on a CPU.
COMPACT_DEVICES: tuple[str, ...] = ("cpu",)


def foreground_selection(fg: Tensor) -> tuple[Tensor, Tensor | None]:
    """The flat indices into the ``[B, N]`` anchors whose foreground terms the loss computes, and
    which of them are foreground: ``(nonzero, None)`` (all of them are) on ``COMPACT_DEVICES``,
    else ``(arange(B * N), fg flattened)``: every anchor, a shape fixed by the input's."""
    flat = fg.reshape(-1)
    if fg.device.type in COMPACT_DEVICES:
        return flat.nonzero().squeeze(1), None
    return torch.arange(flat.numel(), device=fg.device), flat


class _FocalLoss(torch.autograd.Function):
    """Weighted sum of torchvision's ``sigmoid_focal_loss`` (alpha 0.25, gamma 2) over ``[B, N, C]``.

    Targets are one-hot at ``pos`` and zero elsewhere, but never materialised: every logit gets
    the target-0 term ``(1-a) p^2 softplus(x)`` and the entries at ``pos`` are corrected to
    ``a (1-p)^2 softplus(-x)``, those where ``keep`` is False excepted (``keep`` None: all of them;
    ``foreground_selection``). The backward recomputes ``p`` from the logits instead of keeping
    the intermediates of the composite formula.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, weight: Tensor, pos: Tensor, keep: Tensor | None) -> Tensor:
        p = torch.sigmoid(logits)
        per_anchor = F.softplus(logits).mul_(p).mul_(p).sum(dim=2).mul_(1 - ALPHA)  # [B, N]
        xp = logits.reshape(-1)[pos]
        pp = torch.sigmoid(xp)
        fix = ALPHA * (1 - pp) ** 2 * F.softplus(-xp) - (1 - ALPHA) * pp**2 * F.softplus(xp)
        if keep is not None:  # where, not a product: a background anchor's fix may be inf
            fix = torch.where(keep, fix, 0.0)
        per_anchor.view(-1).index_add_(0, torch.div(pos, logits.shape[2], rounding_mode="floor"), fix)
        ctx.save_for_backward(logits, weight, pos, keep)
        return (per_anchor * weight).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        logits, weight, pos, keep = ctx.saved_tensors
        w = (weight * grad)[:, :, None]
        g = _neg_grad(torch.sigmoid(logits), F.softplus(logits)).mul_(w)
        xp = logits.reshape(-1)[pos]
        pp = torch.sigmoid(xp)
        d_pos = -ALPHA * (1 - pp) ** 2 * (2 * pp * F.softplus(-xp) + (1 - pp))
        d_neg = _neg_grad(pp, F.softplus(xp))
        wp = w.reshape(-1)[torch.div(pos, logits.shape[2], rounding_mode="floor")]
        fix = (d_pos - d_neg) * wp
        if keep is not None:
            fix = torch.where(keep, fix, 0.0)
        g.view(-1).index_add_(0, pos, fix)
        return g, None, None, None


def focal_loss(logits: Tensor, labels: Tensor, weight: Tensor,
               selection: tuple[Tensor, Tensor | None] | None = None) -> Tensor:
    """``sum_{b,a} weight[b,a] * sum_c sigmoid_focal_loss(logits[b,a,c], onehot(labels[b,a])[c])``.

    Args:
        logits: ``[B, N, C]`` fp32. labels: ``[B, N]`` int64 class per anchor, < 0 = no positive
            class (background). weight: ``[B, N]`` per-anchor weight (0 = ignored anchor).
        selection: ``foreground_selection(labels >= 0)`` when the caller has it.
    Returns:
        fp32 scalar.
    """
    logits = logits.contiguous()
    anchor, keep = selection if selection is not None else foreground_selection(labels >= 0)
    label = labels.reshape(-1)[anchor]
    if keep is not None:  # every anchor: a background one's class 0 stands in (its correction is dropped)
        label = label.clamp(min=0)
    return _FocalLoss.apply(logits, weight.to(logits.dtype), anchor * logits.shape[2] + label, keep)


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
    selection = foreground_selection(fg)  # the foreground anchors (on COMPACT_DEVICES), else every anchor
    cls_loss = focal_loss(cls_logits, labels, weight, selection)

    anchor, keep = selection
    N = anchors.shape[0]
    fg_b, fg_a = torch.div(anchor, N, rounding_mode="floor"), anchor % N
    match = matches.reshape(-1)[anchor]
    pred = bbox_reg.reshape(-1, 4)[anchor]
    anc = anchors[fg_a]
    if keep is None:
        gt = gt_boxes[fg_b, match]
    else:  # every anchor: a background one against itself, so that its (dropped) terms stay finite
        gt = torch.where(keep[:, None], gt_boxes[fg_b, match.clamp(min=0)], anc)
    if box_loss == "l1":
        per = (pred - box_coder.encode(gt, anc)).abs().sum(dim=1)
    elif box_loss == "giou":
        per = giou_loss(box_coder.decode(pred, anc), gt)
    else:
        raise ValueError(f"unknown box_loss {box_loss!r}")
    if keep is None:
        per_image = torch.zeros(B, dtype=per.dtype, device=per.device).index_add_(0, fg_b, per)
    else:  # a sum per image, not index_add_: B*N atomic adds on B numbers would queue on a GPU
        per_image = torch.where(keep, per, 0.0).view(B, N).sum(dim=1)
    reg_loss = (per_image / num_fg).mean()
    return {"classification": cls_loss, "bbox_regression": reg_loss}
