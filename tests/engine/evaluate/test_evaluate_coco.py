"""COCO metrics: our in-memory COCOeval equals pycocotools run the documented way."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from retinanet.engine.evaluate import coco as coco_mod
from retinanet.engine.evaluate.coco import (
    METRIC_NAMES, CocoResults, category_chunks, coco_ground_truth, coco_metrics, coco_results, detection_columns,
    evaluate_coco, per_class_ap, per_class_table, run_cocoeval, summarize,
)

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


@pytest.mark.parametrize("chunk", [1, 50, None, 10**9], ids=["a-class-a-run", "mid-class-cuts", "default", "one-run"])
def test_chunked_runs_of_the_direct_results_coco_equal_pycocotools_bit_for_bit(chunk):
    """Classes evaluated a run at a time, the results' COCO made without loadRes: every array
    entry, the 12 numbers and the per-class AP are pycocotools' own (loadRes, one COCOeval)."""
    gt, dets = random_case(5, num_images=60)
    ref, _ = pycocotools_reference(gt, dets, CLASS_IDS)
    precision, recall = run_cocoeval(coco_ground_truth(gt, CLASS_IDS), detection_columns(dets), chunk=chunk)
    assert np.array_equal(precision, ref.eval["precision"]) and np.array_equal(recall, ref.eval["recall"])
    metrics = summarize(precision, recall)
    assert np.array_equal([metrics[n] for n in METRIC_NAMES], ref.stats)
    assert per_class_ap(precision, CLASS_IDS, CLASS_IDS) == per_class_ap(ref.eval["precision"], CLASS_IDS, CLASS_IDS)


def test_each_cocoeval_run_holds_one_chunk_of_classes_with_the_collector_paused(monkeypatch):
    """Memory: COCOeval's per-image records (most of its memory) for a few classes at a time, not
    all; time: no cyclic garbage collection walking them while they are made. One run before."""
    import gc

    from pycocotools.cocoeval import COCOeval

    runs = []
    evaluate = COCOeval.evaluate

    def spy(self):
        runs.append((list(self.params.catIds), len(self.cocoDt.anns), gc.isenabled()))
        return evaluate(self)
    monkeypatch.setattr(COCOeval, "evaluate", spy)
    gt, dets = random_case(0, num_images=30)
    dataset, results = coco_ground_truth(gt, CLASS_IDS), detection_columns(dets)
    counts = {c: sum(a["category_id"] == c for a in dataset["annotations"]) + int((results.category_id == c).sum()) for c in CLASS_IDS}
    assert gc.isenabled()
    run_cocoeval(dataset, results, chunk=counts[1] + counts[2])
    assert [r[0] for r in runs] == [[1, 2], [3, 7]] and not any(r[2] for r in runs) and gc.isenabled()
    assert [r[1] for r in runs] == [int(np.isin(results.category_id, ids).sum()) for ids in ([1, 2], [3, 7])]


def test_category_chunks():
    assert category_chunks([1, 2, 3, 7], [5, 5, 20, 1], budget=10) == [[1, 2], [3], [7]]
    assert category_chunks([1, 2], [0, 0], budget=10) == [[1, 2]]
    assert category_chunks([], [], budget=10) == []


def test_the_ground_truth_given_is_not_modified():
    """COCOeval adds an ``ignore`` key to each ground-truth annotation: it was added to the caller's."""
    gt, dets = random_case(0)
    dataset = coco_ground_truth(gt, CLASS_IDS)
    before = copy.deepcopy(dataset)
    run_cocoeval(dataset, detection_columns(dets))
    assert dataset == before


def test_detections_of_an_image_without_ground_truth_entry_are_refused():
    gt, dets = random_case(0, num_images=3)
    dets[1] = dict(dets[1], image_id=999)
    with pytest.raises(ValueError, match=r"1 image id\(s\) not in the ground truth: \[999\]"):
        evaluate_coco(gt, dets, CLASS_IDS)


@pytest.mark.parametrize("field", ["labels", "scores"])
def test_per_image_arrays_of_different_lengths_are_refused(field):
    """Concatenated across images, one short array would shift every later image's labels (zip cut it before)."""
    gt, dets = random_case(0, num_images=3)
    dets[0] = dict(dets[0], **{field: dets[0][field][:-1]})
    with pytest.raises(ValueError, match=f"image 100: per-object arrays of different lengths .*'{field}'"):
        evaluate_coco(gt, dets, CLASS_IDS)
    gt[1] = dict(gt[1], ignore=gt[1]["ignore"][:-1])
    with pytest.raises(ValueError, match="image 101: per-object arrays of different lengths"):
        coco_ground_truth(gt, CLASS_IDS)


def test_detections_are_columns_read_as_the_coco_results_list(monkeypatch):
    gt, dets = random_case(0)
    listed = coco_results(dets)
    ev = evaluate_coco(gt, dets, CLASS_IDS)
    results = ev.detections
    assert isinstance(results, CocoResults) and results.bbox.shape == (len(listed), 4)
    assert len(results) == len(listed) and list(results) == listed and results == listed and results.to_list() == listed
    assert results[0] == listed[0] and results[-1] == listed[-1] and results[2:5] == listed[2:5]
    with pytest.raises(IndexError):
        results[len(listed)]
    assert CocoResults.from_dicts(listed) == results and CocoResults.from_dicts([]) == detection_columns([])
    moved = results.with_category_ids({1: 70, 3: 30})
    assert [d["category_id"] for d in moved] == [{1: 70, 3: 30}.get(d["category_id"], d["category_id"]) for d in listed]
    monkeypatch.setattr(coco_mod, "JSON_ROWS", 7)  # several pieces
    for r in (results, moved, detection_columns([])):
        out = io.BytesIO()
        r.write_json(out)
        assert out.getvalue() == json.dumps(r.to_list()).encode()


def test_images_with_more_objects_of_a_class_than_coco_scores_are_counted_and_named():
    """A shelf of 150 boxes of one class, found perfectly, scored AP 0.66 with no word: COCO scores
    each image's best 100 detections per class. The images over it are now counted (ignored
    objects left out) and the note says what it does to the numbers."""
    from retinanet.engine.evaluate.coco import coco_max_dets_note, over_coco_max_dets
    from retinanet.engine.evaluate.loop import compute_metrics

    def shelf(image_id, n, label=1, crowd=0):
        x = np.arange(n + crowd, dtype=np.float64) * 12.0
        boxes = np.stack([x, np.zeros_like(x), x + 10.0, np.full_like(x, 10.0)], axis=1)
        return {"image_id": image_id, "boxes": boxes, "labels": np.full(n + crowd, label, np.int64),
                "ignore": np.arange(n + crowd) >= n, "height": 20, "width": int(12 * (n + crowd))}

    gt = [shelf(1, 150), shelf(2, 90, crowd=30), shelf(3, 100)]  # 90 counted + 30 crowd; exactly 100: not over
    dets = [{"image_id": g["image_id"], "boxes": g["boxes"][~g["ignore"]], "scores": np.linspace(1.0, 0.5, int((~g["ignore"]).sum())),
             "labels": g["labels"][~g["ignore"]]} for g in gt]
    result = compute_metrics(gt, dets, {"item": 1})
    assert result.metrics["AR100"] < 0.9 and result.metrics["AP"] < 0.9  # perfect detections, capped by COCO
    assert result.over_coco_max_dets == over_coco_max_dets(gt) == (1, 150)
    assert result.to_dict()["over_coco_max_dets"] == {"images": 1, "most_objects_of_a_class": 150}
    assert over_coco_max_dets([shelf(1, 60, label=1), shelf(2, 60, label=2)]) == (0, 0)  # 120 objects, 60 a class
    note = coco_max_dets_note(1, 150)
    assert note.startswith("1 image(s) hold more than 100 objects of one class (up to 150)") and "100/150" in note
