"""VOC AP on a case small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from retinanet.engine.evaluate.voc import box_iou_np, voc_ap, voc_metrics


def hand_case():
    """Class 1 ("a"): ground truth A, B and a difficult D in image 1, C in image 2.

    Detections, by score (IoU with the best ground truth):
        d1 .9 img1 = A           IoU 1     -> TP (A)
        d2 .8 img1 ~ A           IoU .9    -> FP (A already taken)
        d3 .7 img1 = D           difficult -> ignored (neither TP nor FP)
        d4 .6 img2 shifted C     IoU 1/3   -> FP
        d5 .5 img1 = B           IoU 1     -> TP
        d6 .4 img2 = C           IoU 1     -> TP
    npos = 3 (A, B, C). Ranked without d3: TP FP FP TP TP
        recall    1/3  1/3  1/3  2/3  1
        precision 1    1/2  1/3  1/2  3/5
    All-point: envelope 1 up to recall 1/3, then 3/5: AP = 1/3 * 1 + 2/3 * 3/5 = 11/15 = 0.7333
    11-point: t = 0, .1, .2, .3 -> 1; t = .4 ... 1.0 (7 points) -> 3/5: AP = (4 + 4.2) / 11 = 0.74545
    Class 2 has a detection but no ground truth: AP -1, not in the means.
    Class 3 has ground truth but no detections: AP 0.
    """
    gt = [
        {"image_id": 1, "boxes": [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 60, 70, 70]],
         "labels": [1, 1, 1, 3], "ignore": [False, False, True, False]},
        {"image_id": 2, "boxes": [[0, 0, 10, 10]], "labels": [1], "ignore": [False]},
    ]
    dets = [
        {"image_id": 1, "boxes": [[0, 0, 10, 10], [0, 0, 10, 9], [40, 0, 50, 10], [20, 0, 30, 10], [0, 0, 5, 5]],
         "scores": [0.9, 0.8, 0.7, 0.5, 0.3], "labels": [1, 1, 1, 1, 2]},
        {"image_id": 2, "boxes": [[5, 0, 15, 10], [0, 0, 10, 10]], "scores": [0.6, 0.4], "labels": [1, 1]},
    ]
    return gt, dets


def test_voc_ap_hand_checked():
    gt, dets = hand_case()
    voc = voc_metrics(gt, dets, [1, 2, 3], ["a", "b", "c"])
    a, b, c = voc["per_class"]
    assert a["num_gt"] == 3
    assert a["AP50"] == pytest.approx(11 / 15)
    assert a["AP50_07"] == pytest.approx(8.2 / 11)
    assert b["AP50"] == -1.0 and b["AP50_07"] == -1.0 and b["num_gt"] == 0
    assert c["AP50"] == 0.0 and c["AP50_07"] == 0.0
    assert voc["mAP"] == pytest.approx(11 / 15 / 2)
    assert voc["mAP_07"] == pytest.approx(8.2 / 11 / 2)


def test_difficult_match_is_neither_tp_nor_fp():
    gt, dets = hand_case()
    # without the difficult flag, d3 becomes a TP and raises recall above 1 ground truth more
    gt[0]["ignore"] = [False, False, False, False]
    a = voc_metrics(gt, dets, [1])["per_class"][0]
    assert a["num_gt"] == 4
    # ranked: TP FP TP FP TP TP -> recall 1/4 1/4 2/4 2/4 3/4 1, precision 1 1/2 2/3 1/2 3/5 2/3
    assert a["AP50"] == pytest.approx(1 / 4 + 1 / 4 * 2 / 3 + 1 / 4 * 2 / 3 + 1 / 4 * 2 / 3)


def test_voc_ap_curves():
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.75)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=False) == 0.0


def test_box_iou_matches_torchvision():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (7, 2)); a = np.concatenate([a, a + rng.uniform(1, 30, (7, 2))], 1)
    b = rng.uniform(0, 50, (5, 2)); b = np.concatenate([b, b + rng.uniform(1, 30, (5, 2))], 1)
    np.testing.assert_allclose(box_iou_np(a, b), box_iou(torch.tensor(a), torch.tensor(b)).numpy(), atol=1e-12)
