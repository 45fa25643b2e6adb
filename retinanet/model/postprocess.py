"""Decoding and NMS for a whole batch: per-level top-k, one batched_nms call."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from retinanet.model import boxes as box_coder


def _select_candidates(cls_levels, reg_levels, anchor_levels, image_hw: Tensor,
                       score_thresh: float, topk: int):
    """Per level, all images at once: top-k scores > thresh, decoded and clipped boxes.

    The top-k is taken on the logits (sigmoid is monotonic), so only the k picked per image and
    level go through the sigmoid; those at or below ``score_thresh`` are marked invalid.

    Returns concatenated ``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]``, ``valid [B, K]``.
    """
    all_boxes, all_scores, all_labels, all_valid = [], [], [], []
    for logits, reg, anchors in zip(cls_levels, reg_levels, anchor_levels):
        B, n, C = logits.shape
        k = min(topk, n * C)
        top, idx = logits.reshape(B, n * C).topk(k, dim=1)
        top = torch.sigmoid(top.float())
        anchor_idx = torch.div(idx, C, rounding_mode="floor")
        labels = idx % C
        deltas = torch.gather(reg, 1, anchor_idx[:, :, None].expand(B, k, 4)).float()
        boxes = box_coder.decode(deltas, anchors[anchor_idx])
        h = image_hw[:, 0, None].to(boxes.dtype)
        w = image_hw[:, 1, None].to(boxes.dtype)
        x = boxes[..., 0::2].clamp(min=0)
        y = boxes[..., 1::2].clamp(min=0)
        x = torch.minimum(x, w[:, :, None])
        y = torch.minimum(y, h[:, :, None])
        boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)
        all_boxes.append(boxes)
        all_scores.append(top)
        all_labels.append(labels)
        all_valid.append(top > score_thresh)
    return (torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_labels, 1),
            torch.cat(all_valid, 1))


def decode_batch(cls_levels: list[Tensor], reg_levels: list[Tensor], anchor_levels: list[Tensor],
                 image_hw: Tensor, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 300, topk: int = 1000):
    """Batched decode + class-aware NMS returning padded detections (export friendly).

    Args:
        cls_levels: per level ``[B, H*W*A, C]`` logits. reg_levels: per level ``[B, H*W*A, 4]``.
        anchor_levels: per level ``[H*W*A, 4]``. image_hw: ``[B, 2]`` unpadded image sizes
            (boxes are clipped to them).
    Returns:
        boxes ``[B, D, 4]``, scores ``[B, D]``, labels ``[B, D]`` (int64), num ``[B]`` valid
        count; rows beyond ``num`` are zero. Rows are in decreasing score order per image.
    """
    boxes, scores, labels, valid = _select_candidates(
        cls_levels, reg_levels, anchor_levels, image_hw, score_thresh, topk)
    B, K = scores.shape
    C = cls_levels[0].shape[-1]
    img = torch.arange(B, device=scores.device)[:, None].expand(B, K)
    flat_valid = valid.reshape(-1)
    fb = boxes.reshape(-1, 4)[flat_valid]
    fs = scores.reshape(-1)[flat_valid]
    fl = labels.reshape(-1)[flat_valid]
    fi = img.reshape(-1)[flat_valid]
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
