"""COCO metrics: our in-memory COCOeval equals pycocotools run the documented way."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from retinanet.engine.evaluate.coco import METRIC_NAMES, coco_metrics, evaluate_coco, per_class_table

CLASS_IDS = [1, 2, 3, 7]  # 7 has no ground truth at all (an empty class)


def random_case(seed: int = 0, num_images: int = 14):
    """Ground truth with crowd/ignore regions, an image without objects, and noisy detections.

    Object sizes span COCO's small (< 32^2), medium and large (> 96^2) ranges; detections are the
    ground truth jittered by a few pixels (so IoUs cross every threshold) plus random boxes, with
    random scores, and some detections of the empty class 7.
    """
    rng = np.random.default_rng(seed)
    gt, dets = [], []
    for i in range(num_images):
        h, w = 480, 640
        n = 0 if i == 3 else int(rng.integers(1, 9))  # image 3: no ground truth
        wh = np.exp(rng.uniform(np.log(8), np.log(300), size=(n, 2)))
        xy = rng.uniform(0, 1, size=(n, 2)) * (np.array([w, h]) - wh)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.choice(CLASS_IDS[:3], size=n)
        ignore = rng.uniform(size=n) < 0.15
        gt.append({"image_id": 100 + i, "boxes": boxes, "labels": labels, "ignore": ignore, "height": h, "width": w})
        jitter = rng.normal(0, 0.08, size=(n, 4)) * np.concatenate([wh, wh], axis=1)
        keep = rng.uniform(size=n) < 0.85
        m = int(rng.integers(0, 6))
        rwh = rng.uniform(10, 200, size=(m, 2))
        rxy = rng.uniform(0, 400, size=(m, 2))
        det_boxes = np.concatenate([(boxes + jitter)[keep], np.concatenate([rxy, rxy + rwh], axis=1)])
        det_labels = np.concatenate([labels[keep], rng.choice(CLASS_IDS, size=m)])
        flip = rng.uniform(size=len(det_labels)) < 0.1  # some right boxes with the wrong class
        det_labels = np.where(flip, rng.choice(CLASS_IDS, size=len(det_labels)), det_labels)
        scores = rng.uniform(0.05, 1.0, size=len(det_labels)).astype(np.float32)
        dets.append({"image_id": 100 + i, "boxes": det_boxes.astype(np.float32), "scores": scores, "labels": det_labels})
    return gt, dets


def pycocotools_reference(gt, dets, class_ids):
    """pycocotools used as its README says: a GT json, loadRes of a results list, summarize()."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for item in gt:
        images.append({"id": item["image_id"], "height": item["height"], "width": item["width"]})
        for b, c, crowd in zip(item["boxes"], item["labels"], item["ignore"]):
            x1, y1, x2, y2 = (float(v) for v in b)
            anns.append({"id": len(anns) + 1, "image_id": item["image_id"], "category_id": int(c),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})
    for item in dets:
        for b, s, c in zip(item["boxes"], item["scores"], item["labels"]):
            x1, y1, x2, y2 = (float(v) for v in b)
            results.append({"image_id": item["image_id"], "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in class_ids]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
    with contextlib.redirect_stdout(out := io.StringIO()):
        ev.summarize()
    return ev, out.getvalue().rstrip("\n")


def test_metrics_equal_pycocotools_exactly():
    gt, dets = random_case()
    ref, ref_text = pycocotools_reference(gt, dets, CLASS_IDS)
    ev = evaluate_coco(gt, dets, CLASS_IDS)
    got = np.array([ev.metrics[n] for n in METRIC_NAMES])
    assert np.array_equal(got, ref.stats), (got, ref.stats)
    assert np.array_equal(ev.precision, ref.eval["precision"])
    assert np.array_equal(ev.recall, ref.eval["recall"])
    assert ev.summary_text == ref_text
    # the case exercises every kind of number: defined and undefined, not trivially 0 or 1
    assert 0.1 < ev.metrics["AP"] < 0.95 and all(ev.metrics[n] >= 0 for n in METRIC_NAMES)


def test_default_backend_equals_pycocotools_on_several_seeds():
    for seed in (1, 2, 3, 4):
        gt, dets = random_case(seed, num_images=20)
        ref, _ = pycocotools_reference(gt, dets, CLASS_IDS)
        metrics, _, _ = coco_metrics(gt, dets, CLASS_IDS)
        assert np.array_equal([metrics[n] for n in METRIC_NAMES], ref.stats)


def test_faster_coco_eval_equal_up_to_the_last_bit():
    """Why pycocotools is the default: faster_coco_eval's precision differs in the last bit."""
    pytest.importorskip("faster_coco_eval")
    gt, dets = random_case()
    ref, ref_text = pycocotools_reference(gt, dets, CLASS_IDS)
    ev = evaluate_coco(gt, dets, CLASS_IDS, backend="faster_coco_eval")
    np.testing.assert_allclose([ev.metrics[n] for n in METRIC_NAMES], ref.stats, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ev.precision, ref.eval["precision"], rtol=0, atol=1e-15)
    assert np.array_equal(ev.recall, ref.eval["recall"])
    assert ev.summary_text == ref_text


def test_per_class_ap_from_precision_array():
    gt, dets = random_case()
    ref, _ = pycocotools_reference(gt, dets, CLASS_IDS)
    _, per_class, _ = coco_metrics(gt, dets, CLASS_IDS, class_names=["cat", "dog", "bird", "empty"])
    assert [r["class"] for r in per_class] == ["cat", "dog", "bird", "empty"]
    p = ref.eval["precision"]
    for k, row in enumerate(per_class[:3]):
        assert row["AP"] == pytest.approx(np.mean(p[:, :, k, 0, -1]))
        assert row["AP50"] == pytest.approx(np.mean(p[0, :, k, 0, -1]))
    assert per_class[3]["AP"] == -1.0 and per_class[3]["AP50"] == -1.0  # no ground truth
    # COCO AP is the mean of the defined per-class APs
    assert np.mean([r["AP"] for r in per_class[:3]]) == pytest.approx(ref.stats[0])
    table = per_class_table(per_class)
    assert table.splitlines()[0].split() == ["class", "id", "AP", "AP50"]
    assert f"{per_class[0]['AP']:6.3f}" in table.splitlines()[2] and "-" in table.splitlines()[5]  # fractions, as train's


def test_perfect_and_empty_detections():
    gt, _ = random_case(num_images=5)
    perfect = [{"image_id": g["image_id"], "boxes": g["boxes"], "labels": g["labels"], "scores": np.ones(len(g["labels"]))} for g in gt]
    metrics, _, _ = coco_metrics(gt, perfect, CLASS_IDS)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
    metrics, per_class, text = coco_metrics(gt, [], CLASS_IDS)
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0
    assert len(text.splitlines()) == 12
