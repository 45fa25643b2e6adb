"""Decoding and NMS for a whole batch: per-level top-k, one batched_nms call."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from retinanet.model import boxes as box_coder


def _level_candidates(logits: Tensor, k: int, score_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """One level, all images: the (up to) ``k`` best logits per image that can pass the threshold.

    When no image has more than ``k`` logits above the threshold (the usual case for a trained
    model) those are taken directly with one ``nonzero``, with no top-k pass over all
    ``anchors x classes`` scores; otherwise an exact per-image ``topk`` (its entries below the
    threshold are dropped later). Sigmoid is monotonic, so the test runs on the logits.

    Returns flat ``image [M]``, ``index [M]`` (into ``anchors x classes``) and ``logit [M]``.
    """
    B, n, C = logits.shape
    flat = logits.reshape(B, n * C)
    if score_thresh > 0:  # at 0 every score passes: straight to the top-k
        img, idx = (flat > _logit(score_thresh)).nonzero(as_tuple=True)
        if img.numel() <= k or int(torch.bincount(img, minlength=B).max()) <= k:
            return img, idx, flat[img, idx]
    top, idx = flat.topk(min(k, n * C), dim=1)
    img = torch.arange(B, device=flat.device)[:, None].expand_as(idx)
    return img.reshape(-1), idx.reshape(-1), top.reshape(-1)


def _logit(p: float) -> float:
    """The logit whose sigmoid is ``p``, a little lower so that rounding never drops a candidate
    (the exact ``score > thresh`` test is applied to the sigmoid afterwards)."""
    return math.inf if p >= 1 else math.log(p / (1 - p)) - 1e-4


def decode_batch(cls_levels: list[Tensor], reg_levels: list[Tensor], anchor_levels: list[Tensor],
                 image_hw: Tensor, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 300, topk: int = 1000):
    """Batched decode + class-aware NMS returning padded detections.

    Per level, for all images at once: the ``topk`` best scores above ``score_thresh``, their
    boxes decoded and clipped to the image; then one ``batched_nms`` call over every image and
    class, and the ``detections_per_img`` best kept per image.

    Args:
        cls_levels: per level ``[B, H*W*A, C]`` logits. reg_levels: per level ``[B, H*W*A, 4]``.
        anchor_levels: per level ``[H*W*A, 4]``. image_hw: ``[B, 2]`` unpadded image sizes
            (boxes are clipped to them).
    Returns:
        boxes ``[B, D, 4]``, scores ``[B, D]``, labels ``[B, D]`` (int64), num ``[B]`` valid
        count; rows beyond ``num`` are zero. Rows are in decreasing score order per image.
    """
    B, C = cls_levels[0].shape[0], cls_levels[0].shape[-1]
    parts = []
    for logits, reg, anchors in zip(cls_levels, reg_levels, anchor_levels):
        img, idx, logit = _level_candidates(logits, topk, score_thresh)
        anchor_idx = torch.div(idx, C, rounding_mode="floor")
        boxes = box_coder.decode(reg[img, anchor_idx].float(), anchors[anchor_idx])
        parts.append((boxes, torch.sigmoid(logit.float()), idx % C, img))
    fb, fs, fl, fi = (torch.cat(t) for t in zip(*parts))
    hw = image_hw[fi].to(fb.dtype)  # [M, 2] (h, w) of each candidate's image
    fb = torch.minimum(fb.clamp(min=0), hw[:, [1, 0, 1, 0]])
    valid = fs > score_thresh
    fb, fs, fl, fi = fb[valid], fs[valid], fl[valid], fi[valid]
    keep = batched_nms(fb, fs, fi * C + fl, nms_thresh)  # sorted by score
    order = torch.sort(fi[keep], stable=True).indices
    keep = keep[order]
    ki = fi[keep]
    counts = torch.bincount(ki, minlength=B)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[ki]
    sel = rank < detections_per_img
    keep, ki, rank = keep[sel], ki[sel], rank[sel]
    D = detections_per_img
    out_boxes = fb.new_zeros((B, D, 4)).index_put_((ki, rank), fb[keep])
    out_scores = fs.new_zeros((B, D)).index_put_((ki, rank), fs[keep])
    out_labels = fl.new_zeros((B, D)).index_put_((ki, rank), fl[keep])
    return out_boxes, out_scores, out_labels, counts.clamp(max=D)


def unpad_detections(boxes: Tensor, scores: Tensor, labels: Tensor, num: Tensor) -> list[dict]:
    """Padded ``decode_batch`` output -> one dict per image (``boxes``, ``scores``, ``labels``)."""
    return [{"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]}
            for i, n in enumerate(num.tolist())]
