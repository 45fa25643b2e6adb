"""Anchor labelling for a whole batch: IoU >= 0.5 foreground, < 0.4 background, else ignored.

Ignore regions (VOC ``difficult``, COCO ``iscrowd``: ``target["ignore"]``) are never matched.
An anchor that is not foreground and lies mostly inside one of them (intersection over the
anchor's own area, IoF, > ``IGNORE_IOF``) is labelled ``IGNORE``: it is neither trained as an
object nor as background. IoF rather than IoU so that a small anchor inside a large crowd box is
ignored too (mmdetection's ``MaxIoUAssigner`` ``ignore_iof_thr`` with ``ignore_wrt_candidates``).

``match_anchors`` is the entry point (the loss uses it): with ``B*M*N`` (images x padded boxes x
anchors) up to ``MATCH_CHUNK_ELEMENTS`` it is ``match(*batched_overlaps(...))``; above, it walks the
boxes in chunks with running maxima and gives exactly the same labels (see its docstring for the
memory bound).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from retinanet.errors import RetinaNetError

BACKGROUND = -1
IGNORE = -2
IGNORE_IOF = 0.5  # anchors covered more than this by an ignore region leave the classification loss
# B*M*N above which match_anchors matches in chunks of boxes: 2^23 elements is ~0.13 GB of
# IoU intermediates (the chunked path holds ~4 floats per element at its peak)
MATCH_CHUNK_ELEMENTS = 1 << 23


def _ignore_flags(t: dict, device) -> Tensor:
    """``[M_i]`` bool ignore flags of one target (all False when the target has none)."""
    n = t["labels"].numel()
    if "ignore" not in t:
        return torch.zeros(n, dtype=torch.bool, device=device)
    flags = t["ignore"].to(device=device, dtype=torch.bool).reshape(-1)
    if flags.numel() != n:
        raise RetinaNetError(f"target of image {t.get('file', t.get('image_id', '?'))}: "
                             f"{flags.numel()} ignore flags for {n} labels")
    return flags


def pad_targets(targets: list[dict], device) -> tuple[Tensor, Tensor, Tensor]:
    """Pad per-image targets to ``boxes [B, M, 4]``, ``labels [B, M]`` (-1 = padding) and
    ``ignore [B, M]`` bool (the target's optional ``ignore`` flags; False on padding).

    ``M`` is the largest box count of the batch (ignore boxes included), at least 1.
    """
    boxes = pad_sequence([t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4) for t in targets],
                         batch_first=True)
    labels = pad_sequence([t["labels"].to(device=device, dtype=torch.int64).reshape(-1) for t in targets],
                          batch_first=True, padding_value=-1)
    ignore = pad_sequence([_ignore_flags(t, device) for t in targets], batch_first=True, padding_value=False)
    if boxes.shape[1] == 0:
        return F.pad(boxes, (0, 0, 0, 1)), F.pad(labels, (0, 1), value=-1), F.pad(ignore, (0, 1), value=False)
    return boxes, labels, ignore


def batched_overlaps(gt: Tensor, anchors: Tensor, valid: Tensor, ignore: Tensor) -> tuple[Tensor, Tensor]:
    """IoU with the real gt boxes and IoF with the ignore boxes, from one intersection pass.

    The IoU arithmetic is torchvision's ``box_iou`` (same values, bit for bit).

    Args:
        gt: ``[B, M, 4]`` padded xyxy boxes. anchors: ``[N, 4]`` xyxy, positive area.
        valid: ``[B, M]`` bool, rows matched as objects. ignore: ``[B, M]`` bool, ignore-region rows.
    Returns:
        iou ``[B, M, N]`` (rows not ``valid`` -> -1), and ``[B, N]`` the largest intersection over
        the anchor's area with any ignore row of the image, in 0..1 (0 when the image has none).
    """
    area_gt = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])  # [B, M]
    area_anchor = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])  # [N]
    lt = torch.max(gt[:, :, None, :2], anchors[:, :2])  # [B, M, N, 2]
    rb = torch.min(gt[:, :, None, 2:], anchors[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [B, M, N]
    iou = (inter / (area_gt[:, :, None] + area_anchor - inter)).masked_fill_(~valid[:, :, None], -1.0)
    # IoF max over rows = (max intersection over rows) / anchor area: the area is the same for every row
    ignore_iof = inter.masked_fill_(~ignore[:, :, None], 0.0).amax(dim=1) / area_anchor  # [B, N]
    return iou, ignore_iof


def _lean_overlaps(gt: Tensor, anchors: Tensor, valid: Tensor, ignore: Tensor) -> tuple[Tensor, Tensor]:
    """``batched_overlaps`` with one ``[B, M, N]`` plane per coordinate instead of ``[B, M, N, 2]``
    corner pairs, reused in place: the same values bit for bit (the same IEEE operations on the
    same operands), about 4 floats per element at the peak instead of 8, and contiguous in N."""
    area_gt = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])  # [B, M]
    area_anchor = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])  # [N]
    g = gt[..., None]  # [B, M, 4, 1]
    w = torch.min(g[:, :, 2], anchors[:, 2]).sub_(torch.max(g[:, :, 0], anchors[:, 0])).clamp_(min=0)  # [B, M, N]
    inter = torch.min(g[:, :, 3], anchors[:, 3]).sub_(torch.max(g[:, :, 1], anchors[:, 1])).clamp_(min=0)
    inter = torch.mul(w, inter, out=w)  # w * h: the product box_iou takes
    union = (area_gt[:, :, None] + area_anchor).sub_(inter)
    iou = torch.div(inter, union, out=union).masked_fill_(~valid[:, :, None], -1.0)
    ignore_iof = inter.masked_fill_(~ignore[:, :, None], 0.0).amax(dim=1) / area_anchor  # [B, N]
    return iou, ignore_iof


def match(iou: Tensor, valid: Tensor, high: float = 0.5, low: float = 0.4,
          allow_low_quality: bool = True, ignore_iof: Tensor | None = None,
          ignore_thresh: float = IGNORE_IOF) -> Tensor:
    """torchvision Matcher semantics, batched, plus ignore regions.

    Args:
        iou: ``[B, M, N]`` IoU (rows not ``valid`` -1). valid: ``[B, M]`` bool, real gt rows:
            only these can be matched, also by the low-quality rule (best anchor of each gt).
        ignore_iof: optional ``[B, N]`` IoF of each anchor with the image's ignore regions; an
            anchor not foreground with IoF > ``ignore_thresh`` becomes ``IGNORE``.
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
    if ignore_iof is not None:
        matches = matches.masked_fill((ignore_iof > ignore_thresh) & (matches < 0), IGNORE)
    return matches


def match_anchors(gt: Tensor, anchors: Tensor, valid: Tensor, ignore: Tensor, *, high: float = 0.5, low: float = 0.4,
                  allow_low_quality: bool = True, ignore_thresh: float = IGNORE_IOF,
                  chunk_elements: int | None = MATCH_CHUNK_ELEMENTS) -> Tensor:
    """``match(*batched_overlaps(gt, anchors, valid, ignore))`` with bounded memory, same result.

    The overlaps are computed one coordinate plane at a time (``_lean_overlaps``: ~16 bytes per
    ``[B, M, N]`` element at the peak; ``batched_overlaps`` holds ~36). With ``B*M*N <=
    chunk_elements`` all boxes are taken at once; above, ``r = max(1, chunk_elements // (B*N))``
    box rows at a time, with running per-anchor maxima:

    - best IoU and its box: a later chunk replaces the kept one only where strictly greater, so on
      ties the first box wins, as ``max(dim=1)`` does;
    - a box's best anchor (the low-quality rule) is a max over anchors, whole inside each chunk;
    - the ignore IoF: the max of (intersection / anchor area) over chunks equals (max intersection)
      / area exactly, since division by the same positive number is monotonic.

    Peak memory, in bytes: about ``16 * B*min(M, r)*N`` for one chunk plus ``~40 * B*N`` for the
    per-anchor state and the result, i.e. ``O(max(chunk_elements, B*N))`` whatever the number of
    boxes M (the whole matrix at once: ``~36 * B*M*N``; ``benchmarks/bench_matcher.py``).

    Args:
        gt: ``[B, M, 4]`` padded xyxy boxes. anchors: ``[N, 4]`` xyxy, positive area.
        valid: ``[B, M]`` bool rows matched as objects. ignore: ``[B, M]`` bool ignore-region rows.
        high, low, allow_low_quality, ignore_thresh: as in ``match``.
        chunk_elements: the ``B*M*N`` above which to chunk; None = never.
    Returns:
        ``[B, N]`` int64: matched box index, -1 background, -2 ignored.
    """
    B, M = valid.shape
    N = anchors.shape[0]
    rows = M if chunk_elements is None else max(1, chunk_elements // max(1, B * N))
    if rows >= M:
        iou, ignore_iof = _lean_overlaps(gt, anchors, valid, ignore)
        return match(iou, valid, high, low, allow_low_quality, ignore_iof=ignore_iof, ignore_thresh=ignore_thresh)
    vals = best_box = ignore_iof = None
    is_best = torch.zeros(B, N, dtype=torch.bool, device=anchors.device)  # anchor is some valid box's best
    for start in range(0, M, rows):
        part = slice(start, start + rows)
        iou, iof = _lean_overlaps(gt[:, part], anchors, valid[:, part], ignore[:, part])  # [B, r, N], [B, N]
        v, i = iou.max(dim=1)  # [B, N]
        if vals is None:
            vals, best_box, ignore_iof = v, i, iof
        else:
            better = v > vals
            vals = torch.where(better, v, vals)
            best_box = torch.where(better, i + start, best_box)
            ignore_iof = torch.maximum(ignore_iof, iof)
        if allow_low_quality:
            top = iou.max(dim=2).values  # [B, r] each box's best IoU over all anchors
            is_best |= ((iou == top[:, :, None]) & valid[:, part, None]).any(dim=1)
        del iou, iof, v, i
    matches = best_box.masked_fill(vals < low, BACKGROUND)
    matches = matches.masked_fill_((vals >= low) & (vals < high), IGNORE)
    if allow_low_quality:
        matches = torch.where(is_best, best_box, matches)
    return matches.masked_fill_((ignore_iof > ignore_thresh) & (matches < 0), IGNORE)
