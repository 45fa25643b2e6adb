"""Post-processing for a whole batch: per-level top-k, box decoding, clipping, class-aware NMS.

Two paths over the same raw head outputs, built from the same pieces (``_topk_per_image``,
``_decode_candidates``, ``clip_boxes``, ``_pad_per_image``):

- ``decode_batch`` (eager): drops the scores at or below ``score_thresh`` first and takes the
  per-level top-k only where an image has more candidates than that, so NMS sees few boxes.
- ``decode_batch_static`` (export): every shape is fixed by the input shape (top-k on every
  level, NMS over all candidates, the threshold applied after NMS), as an ONNX graph needs.

A box that clipping leaves with no area (it lay in the batch padding, beside a narrow image) is
not a detection in either path; torchvision keeps such boxes. Both give the same detections
(``tests/model/test_postprocess.py``) in one padded layout::

    boxes   [B, D, 4] float32 xyxy pixels of the (resized, unpadded) image
    scores  [B, D]    float32, decreasing within each image
    labels  [B, D]    int64 class ids
    num     [B]       int64: rows [:num[b]] of image b are detections

``D`` is ``detections_per_img``; rows from ``num[b]`` on are padding: ``PAD_LABEL`` (-1) label,
score 0 and a zero box. This is also the exported ONNX graph's output contract. The eager path
adds ``cut [B]`` float32: 0, or (image b has fewer than ``D`` detections, but some level had more
candidates above ``score_thresh`` than its top-k kept, so some never reached NMS) the score of the
last candidate such a level kept: the ones left out scored at most that (more detections could
have come out with a larger ``topk``; ``RetinaNet.detect`` reports it as ``candidates_cut``).
At ``score_thresh`` 0 no threshold selects, the top-k does, and ``cut`` is 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import batched_nms, nms

from retinanet.model import boxes as box_coder

PAD_LABEL = -1  # label of a padding row (score 0, box 0); never a class id


def clip_boxes(boxes: Tensor, image_hw: Tensor) -> Tensor:
    """Clamp xyxy boxes to their image ``[0, W] x [0, H]``.

    Args:
        boxes: ``[..., 4]``. image_hw: ``[..., 2]`` ``(H, W)`` of each box's image, broadcastable
            to ``boxes[..., :2]`` (e.g. ``[M, 2]`` for ``[M, 4]`` boxes, ``[B, 1, 2]`` for ``[B, N, 4]``).
    Returns:
        ``[..., 4]`` clipped boxes.
    """
    return torch.minimum(boxes.clamp(min=0), image_hw[..., [1, 0, 1, 0]].to(boxes.dtype))


def has_area(boxes: Tensor) -> Tensor:
    """``[...]`` bool: the ``[..., 4]`` xyxy boxes with positive width and height."""
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def _logit(p: float) -> float:
    """The logit whose sigmoid is ``p``, a little lower so that rounding never drops a candidate
    (the exact ``score > thresh`` test is applied to the sigmoid afterwards)."""
    return math.inf if p >= 1 else math.log(p / (1 - p)) - 1e-4


def _topk_per_image(flat: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest logits of each image, always ``k`` of them.

    The logits are padded with ``k`` entries of ``-inf`` first, so the result has ``k`` columns
    whatever ``n``: with dynamic image sizes every shape after the top-k is then fixed, which
    keeps ``torch.export``'s shape reasoning small (with ``min(k, n)`` per level a dynamic export
    took 1.5x as long; BENCHMARKS.md, "ONNX export time"). Where ``n < k`` the extra picks have
    logit ``-inf`` (score 0: never above the threshold) and index ``n - 1``, a copy of a real pick
    that NMS suppresses.

    Args:
        flat: ``[B, n]`` logits of one level, ``n = anchors x classes`` (may be symbolic).
    Returns:
        image ``[B, k]``, index into ``n`` ``[B, k]``, logit ``[B, k]``.
    """
    n = flat.shape[1]
    top, idx = F.pad(flat, (0, k), value=float("-inf")).topk(k, dim=1)
    idx = idx.clamp(max=n - 1)
    img = torch.arange(flat.shape[0], device=flat.device)[:, None].expand_as(idx)
    return img, idx, top


def _level_candidates(logits: Tensor, k: int, score_thresh: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Eager: one level, all images: the (up to) ``k`` best logits per image that can pass the threshold.

    When no image has more than ``k`` logits above the threshold (the usual case for a trained
    model) those are taken directly with one ``nonzero``, with no top-k pass over all
    ``anchors x classes`` scores; otherwise an exact per-image top-k (its entries below the
    threshold are dropped later). Sigmoid is monotonic, so the test runs on the logits.

    Returns flat ``image [M]``, ``index [M]`` (into ``anchors x classes``), ``logit [M]``, and
    ``[B]`` the ``k``-th best logit of each image that has more than ``k`` above the threshold on
    this level (its top-k left out the rest, all at most that), ``-inf`` for the others. The
    counts are those the choice of path takes anyway: no extra pass, no extra device-to-host read.
    At threshold 0 (no threshold: every anchor and class passes) the top-k is the selection
    itself, torchvision's, and nothing is reported as left out.
    """
    B, n, C = logits.shape
    flat = logits.reshape(B, n * C)
    none_left_out = torch.full((B,), float("-inf"), dtype=flat.dtype, device=flat.device)
    if score_thresh <= 0:  # every score passes: straight to the top-k
        return (*(t.reshape(-1) for t in _topk_per_image(flat, k)), none_left_out)  # type: ignore[return-value]
    img, idx = (flat > _logit(score_thresh)).nonzero(as_tuple=True)
    if img.numel() <= k:
        return img, idx, flat[img, idx], none_left_out
    counts = torch.bincount(img, minlength=B)  # [B] logits above the threshold per image
    if int(counts.max()) <= k:
        return img, idx, flat[img, idx], none_left_out
    img, idx, top = _topk_per_image(flat, k)
    return img.reshape(-1), idx.reshape(-1), top.reshape(-1), torch.where(counts > k, top[:, -1], none_left_out)


def _decode_candidates(reg: Tensor, anchors: Tensor, img: Tensor, idx: Tensor, num_classes: int,
                       ) -> tuple[Tensor, Tensor]:
    """Boxes and labels of candidates ``(img, idx)`` of one level (any matching index shapes ``S``).

    Args:
        reg: ``[B, A_l, 4]`` box deltas. anchors: ``[A_l, 4]``. idx: into ``A_l x num_classes``.
    Returns:
        float32 boxes ``[*S, 4]`` (not clipped) and int64 labels ``[*S]``.
    """
    anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
    return box_coder.decode(reg[img, anchor_idx].float(), anchors[anchor_idx]), idx % num_classes


def _pad_per_image(boxes: Tensor, scores: Tensor, labels: Tensor, image: Tensor, keep: Tensor,
                   score_thresh: float, batch_size, max_dets: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The NMS survivors above ``score_thresh``, ``max_dets`` per image at most, in the padded layout.

    Args:
        boxes ``[M, 4]``, scores ``[M]``, labels ``[M]``, image ``[M]``: flat candidates.
        keep: ``[K]`` indices into them, highest score first (NMS output).
        batch_size: ``B`` (may be symbolic).
    Returns:
        boxes ``[B, D, 4]``, scores ``[B, D]``, labels ``[B, D]``, num ``[B]`` (module docstring).
    """
    kept_image = image[keep]
    kept_scores = scores[keep]
    member = kept_image[:, None] == torch.arange(batch_size, device=image.device)[None]  # [K, B]
    rank = member.cumsum(0).gather(1, kept_image[:, None]).squeeze(1) - 1  # [K] place within its image
    valid = (kept_scores > score_thresh) & (rank < max_dets)
    trash = batch_size * max_dets  # rows that are not kept are written to one extra slot, dropped
    slot = torch.where(valid, kept_image * max_dets + rank, torch.full_like(rank, trash))
    out_boxes = boxes.new_zeros(trash + 1, 4).index_put((slot,), boxes[keep])
    out_scores = scores.new_zeros(trash + 1).index_put((slot,), kept_scores)
    out_labels = labels.new_full((trash + 1,), PAD_LABEL).index_put((slot,), labels[keep])
    num = (member & valid[:, None]).sum(0)  # [B] int64
    return (out_boxes[:trash].view(batch_size, max_dets, 4), out_scores[:trash].view(batch_size, max_dets),
            out_labels[:trash].view(batch_size, max_dets), num)


def decode_batch(cls_levels: list[Tensor], reg_levels: list[Tensor], anchor_levels: list[Tensor],
                 image_hw: Tensor, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 300, topk: int = 1000):
    """Eager batched decode + class-aware NMS (torchvision's detections, without its loops).

    Per level, for all images at once: the ``topk`` best scores above ``score_thresh``, their
    boxes decoded and clipped to the image; then one ``batched_nms`` call over every image and
    class, and the ``detections_per_img`` best kept per image.

    Args:
        cls_levels: per level ``[B, H*W*A, C]`` logits. reg_levels: per level ``[B, H*W*A, 4]``.
        anchor_levels: per level ``[H*W*A, 4]``. image_hw: ``[B, 2]`` unpadded image sizes
            (boxes are clipped to them).
    Returns:
        boxes ``[B, D, 4]``, scores ``[B, D]``, labels ``[B, D]`` (int64), num ``[B]``: the
        padded layout of the module docstring (padding label ``PAD_LABEL``); and ``cut [B]``
        float32: for an image below ``D`` detections for which some level's ``topk`` left out
        candidates above ``score_thresh``, the score those stayed at or below; else 0.
    """
    B, C = cls_levels[0].shape[0], cls_levels[0].shape[-1]
    parts, left_out = [], []
    for logits, reg, anchors in zip(cls_levels, reg_levels, anchor_levels):
        img, idx, logit, kth = _level_candidates(logits, topk, score_thresh)
        left_out.append(kth)
        parts.append((*_decode_candidates(reg, anchors, img, idx, C), torch.sigmoid(logit.float()), img))
    fb, fl, fs, fi = (torch.cat(t) for t in zip(*parts))
    fb = clip_boxes(fb, image_hw[fi])
    valid = (fs > score_thresh) & has_area(fb)  # a box left with no area by the clip (it lay in the padding): none
    sel = valid.nonzero().squeeze(1)  # one nonzero (a GPU sync) for the four, not one per mask indexing
    fb, fs, fl, fi = fb[sel], fs[sel], fl[sel], fi[sel]
    keep = batched_nms(fb, fs, fi * C + fl, nms_thresh)  # sorted by score
    boxes, scores, labels, num = _pad_per_image(fb, fs, fl, fi, keep, score_thresh, B, detections_per_img)
    kth = torch.stack(left_out).amax(0).float()  # [B]: the best level that left candidates out
    cut = torch.where((kth > float("-inf")) & (num < detections_per_img), torch.sigmoid(kth), 0.0)  # > score_thresh > 0
    return boxes, scores, labels, num, cut


def decode_batch_static(cls_levels: list[Tensor], reg_levels: list[Tensor], anchor_levels: list[Tensor],
                        image_hw: Tensor, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                        detections_per_img: int = 300, topk: int = 1000):
    """``decode_batch`` with every shape fixed by the input's (the exported graph's path).

    Per level and image the ``topk`` best candidates whatever their score, decoded and clipped;
    one NMS over all of them, images and classes kept apart by shifting each (image, class)
    group to its own coordinate range; then the threshold. A candidate at or below
    ``score_thresh`` never suppresses a better one, so this keeps the same set as thresholding
    before NMS (``decode_batch``).

    Args:
        as ``decode_batch``; image_hw: ``[B, 2]`` or ``[2]`` (every image the same size).
    Returns:
        as ``decode_batch`` (same padded layout).
    """
    B, C = cls_levels[0].shape[0], cls_levels[0].shape[-1]
    parts = []
    for logits, reg, anchors in zip(cls_levels, reg_levels, anchor_levels):
        img, idx, logit = _topk_per_image(logits.flatten(1), topk)  # [B, k_l]
        parts.append((*_decode_candidates(reg, anchors, img, idx, C), torch.sigmoid(logit.float()), img))
    boxes, labels, scores, image = (torch.cat(t, 1) for t in zip(*parts))  # [B, N, ...]
    boxes = clip_boxes(boxes, image_hw.view(-1, 1, 2)).reshape(-1, 4)
    scores, labels, image = scores.reshape(-1), labels.reshape(-1), image.reshape(-1)
    scores = torch.where(has_area(boxes), scores, torch.zeros_like(scores))  # below any threshold, as decode_batch drops them
    shift = (image * C + labels).to(boxes.dtype) * (boxes.max() + 1)  # ONNX NMS is single-class
    keep = nms(boxes + shift[:, None], scores, nms_thresh)  # best first
    return _pad_per_image(boxes, scores, labels, image, keep, score_thresh, B, detections_per_img)


def unpad_detections(boxes: Tensor, scores: Tensor, labels: Tensor, num: Tensor | list[int]) -> list[dict]:
    """Padded ``decode_batch`` output -> one dict per image (``boxes``, ``scores``, ``labels``);
    ``num`` may be read already (a list)."""
    return [{"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]}
            for i, n in enumerate(num.tolist() if isinstance(num, Tensor) else num)]
