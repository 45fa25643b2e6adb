"""Pascal VOC detection AP: AP50 per class, 11-point (VOC2007) and all-point (VOC2010+) mAP.

Same per-image input format as ``retinanet.engine.evaluate.coco`` (continuous ``xyxy`` pixels;
``ignore`` marks VOC "difficult" objects, or COCO crowd). The protocol follows the VOC devkit:

- detections of a class are ranked by score over the whole set; each is matched to the
  unmatched-or-not ground truth box of its image with the highest IoU; IoU > 0.5 (strictly)
  with a not-yet-matched box is a true positive, with an already matched box a false positive,
  with a difficult box neither (the detection is dropped from the ranking); IoU <= 0.5 is a
  false positive;
- recall is over the non-difficult boxes; AP is the area under the interpolated
  precision-recall curve: the mean of the best precision at recall >= 0, 0.1, ..., 1 (VOC2007,
  11 points) or the exact area under the monotone envelope (VOC2010 and later, "all points").

Difference from the official devkit: the devkit measures boxes in 1-based inclusive pixels and
adds 1 to every width and height (``iw = min(x2) - max(x1) + 1``); here IoU is computed in the
project's continuous convention (width ``x2 - x1``), so values differ slightly (mostly for small
boxes). A class without non-difficult ground truth has AP -1 and is left out of the means.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from retinanet.engine.evaluate.coco import as_array

IOU_THRESHOLD = 0.5


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of continuous ``xyxy`` boxes ``a [N, 4]`` x ``b [M, 4]`` -> ``[N, M]`` (0 for empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)  # [N, M]
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Area under a precision-recall curve, VOC style.

    Args:
        recall: ``[D]`` non-decreasing recall after each ranked detection.
        precision: ``[D]`` precision after each ranked detection.
        use_07_metric: True for the 11-point VOC2007 mean, False for the all-point area.
    Returns:
        AP in [0, 1] (0 for no detections).
    """
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone envelope, right to left
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _match_class(gt_per_image: dict[int, tuple[np.ndarray, np.ndarray]], dets: list[tuple[int, np.ndarray, np.ndarray]]):
    """True/false positive flags of one class's detections, ranked by score.

    Args:
        gt_per_image: image_id -> (boxes ``[G, 4]``, difficult ``[G]`` bool).
        dets: per image (image_id, boxes ``[K, 4]``, scores ``[K]``).
    Returns:
        (tp ``[D]``, fp ``[D]``) 0/1 float arrays over the detections in descending score order,
        detections matched to a difficult box removed.
    """
    if not dets:
        return np.zeros(0), np.zeros(0)
    boxes = np.concatenate([b for _, b, _ in dets])  # [D, 4], grouped by image
    scores = np.concatenate([s for _, _, s in dets])  # [D]
    order = np.argsort(-scores, kind="stable")  # global rank; ties keep input order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    no_gt = (np.zeros((0, 4)), np.zeros(0, dtype=bool))
    start = 0
    for image_id, _, s in dets:
        idx = np.arange(start, start + len(s))
        start += len(s)
        idx = idx[np.argsort(rank[idx], kind="stable")]  # this image's detections by global rank
        gt_boxes, difficult = gt_per_image.get(image_id, no_gt)
        if len(gt_boxes) == 0:
            fp[idx] = 1.0
            continue
        iou = box_iou_np(boxes[idx], gt_boxes)  # [K, G]
        best, best_iou = iou.argmax(axis=1), iou.max(axis=1)
        used = np.zeros(len(gt_boxes), dtype=bool)
        # Greedy in score order, as the devkit: sequential within an image (a box is taken once).
        for d, g, o in zip(idx, best, best_iou):
            if o <= IOU_THRESHOLD:
                fp[d] = 1.0
            elif difficult[g]:
                continue  # neither TP nor FP
            elif not used[g]:
                tp[d], used[g] = 1.0, True
            else:
                fp[d] = 1.0
    keep = (tp + fp)[order] > 0
    return tp[order][keep], fp[order][keep]


def voc_metrics(
    gt: Sequence[dict[str, Any]],
    dets: Sequence[dict[str, Any]],
    class_ids: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """VOC AP50 per class and the two mAPs.

    Args:
        gt: per-image ground truth (``image_id``, ``boxes [N, 4]`` xyxy, ``labels [N]``,
            optional ``ignore [N]`` = difficult).
        dets: per-image detections (``image_id``, ``boxes [K, 4]``, ``scores [K]``, ``labels [K]``).
        class_ids: the classes evaluated; class_names: their names (default "class N").
    Returns:
        ``{"mAP_07": float, "mAP": float, "per_class": [{"class", "id", "num_gt", "AP50_07",
        "AP50"}]}``; "mAP" is the all-point (VOC2010+) mean, -1.0 where undefined.
    """
    names = list(class_names) if class_names is not None else [f"class {c}" for c in class_ids]
    gt_by_class: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
    num_gt: dict[int, int] = defaultdict(int)
    for item in gt:
        boxes = as_array(item["boxes"], (4,))
        labels = as_array(item["labels"], dtype=np.int64).ravel()
        ignore = as_array(item.get("ignore", np.zeros(len(labels))), dtype=bool).ravel()
        for c in np.unique(labels):
            m = labels == c
            gt_by_class[int(c)][int(item["image_id"])] = (boxes[m], ignore[m])
            num_gt[int(c)] += int((~ignore[m]).sum())
    dets_by_class: dict[int, list] = defaultdict(list)
    for item in dets:
        boxes = as_array(item["boxes"], (4,))
        scores = as_array(item["scores"]).ravel()
        labels = as_array(item["labels"], dtype=np.int64).ravel()
        for c in np.unique(labels):
            m = labels == c
            dets_by_class[int(c)].append((int(item["image_id"]), boxes[m], scores[m]))

    rows = []
    for cid, name in zip(class_ids, names):
        cid, npos = int(cid), num_gt.get(int(cid), 0)
        if npos == 0:
            rows.append({"class": str(name), "id": cid, "num_gt": 0, "AP50_07": -1.0, "AP50": -1.0})
            continue
        tp, fp = _match_class(gt_by_class.get(cid, {}), dets_by_class.get(cid, []))
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        rows.append(
            {
                "class": str(name),
                "id": cid,
                "num_gt": npos,
                "AP50_07": voc_ap(recall, precision, use_07_metric=True),
                "AP50": voc_ap(recall, precision, use_07_metric=False),
            }
        )

    def mean(key: str) -> float:
        values = [r[key] for r in rows if r[key] >= 0]
        return float(np.mean(values)) if values else -1.0

    return {"mAP_07": mean("AP50_07"), "mAP": mean("AP50"), "per_class": rows}
