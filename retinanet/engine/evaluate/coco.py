"""COCO box metrics on plain arrays: the 12 pycocotools numbers, per-class AP and PR curves.

Ground truth and detections are per-image dicts in absolute continuous ``xyxy`` pixels (the
project's box convention). They are turned into an in-memory COCO dataset (``bbox`` =
``[x1, y1, x2 - x1, y2 - y1]``, ``area`` = box area, ``iscrowd=1`` for ignored regions so that
VOC "difficult" and COCO crowd objects are neither required nor penalised) and evaluated by
COCOeval.

At COCO val2017's size (5,000 images, 500,000 detections) COCOeval's own work is most of the
time and its per-image records (``evalImgs``) most of the memory. Around it: the detections are
read once into columns (``detection_columns`` -> ``CocoResults``, 27 MiB; the list of 500,000
result dicts is 205 MiB, and was built twice); the results' COCO is made from them as ``loadRes``
makes it, minus the ``segmentation`` polygon a bbox evaluation never reads
(``result_annotations``); the classes are evaluated a run of about ``CHUNK_ANNOTATIONS``
annotations at a time, each run by its own COCOeval (``run_cocoeval``: the same numbers bit for
bit, a fraction of the memory); and Python's cyclic garbage collector is paused meanwhile
(``gc_paused``). ``benchmarks/bench_coco_eval.py`` measures each part.

Backend: ``pycocotools`` by default, because its numbers are the reference. The C++
``faster_coco_eval`` (1.8.0) is about 5x faster (0.47 s vs 2.56 s for ``evaluate_coco`` on
``random_case(0, 2000)`` of ``tests/engine/evaluate/test_evaluate_coco.py``: 2,000 images, 12,525
detections, one CPU core) but it is *not* bit-exact: pycocotools
divides ``tp / (tp + fp + np.spacing(1))``, so some precision entries differ in the last bit
(``1.0`` vs ``0.9999999999999998``) and in 5 of 40 random cases one of the 12 numbers differed by
1.1e-16 (the printed 3-decimal summary was identical every time). ``backend="faster_coco_eval"``
selects it; ``tests/engine/evaluate/test_evaluate_coco.py`` checks both. It is an optional dependency
(``pip install 'retinanet[fast-eval]'``), imported only when selected.

Input formats (arrays may be numpy, torch or lists)::

    gt:   {"image_id": int, "boxes": [N, 4], "labels": [N], "ignore": [N] bool (optional),
           "height": int, "width": int (optional, for the COCO image record)}
    dets: {"image_id": int, "boxes": [K, 4], "scores": [K], "labels": [K]}
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from retinanet.errors import RetinaNetError

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# (ap?, iou threshold or None for 0.50:0.95, area range label, maxDets) of each of the 12 numbers,
# in the order pycocotools' COCOeval.summarize() prints them.
_SUMMARY_SPEC = (
    (True, None, "all", 100),
    (True, 0.5, "all", 100),
    (True, 0.75, "all", 100),
    (True, None, "small", 100),
    (True, None, "medium", 100),
    (True, None, "large", 100),
    (False, None, "all", 1),
    (False, None, "all", 10),
    (False, None, "all", 100),
    (False, None, "small", 100),
    (False, None, "medium", 100),
    (False, None, "large", 100),
)
_AREA_LABELS = ("all", "small", "medium", "large")  # COCOeval Params.areaRngLbl
_MAX_DETS = (1, 10, 100)  # COCOeval Params.maxDets for bbox
COCO_MAX_DETS = _MAX_DETS[-1]  # detections per image and class that AP and AR100 score


def over_coco_max_dets(gt: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """``(images, most)``: the images of ``gt`` (``evaluate_coco``'s per-image records) holding more
    than ``COCO_MAX_DETS`` objects of one class, not counting ignored ones (crowd, difficult: COCO
    matches them without counting them), and the most objects of one class in an image. COCO AP
    and AR score each image's best 100 detections per class, so their recall on such an image is
    at most 100/its objects even with perfect detections: a crowded dataset's AP is capped."""
    images, most = 0, 0
    for g in gt:
        labels = np.asarray(g["labels"], dtype=np.int64).ravel()
        if "ignore" in g:
            labels = labels[~np.asarray(g["ignore"], dtype=bool).ravel()]
        if len(labels) > COCO_MAX_DETS:
            top = int(np.unique(labels, return_counts=True)[1].max())
            images, most = images + (top > COCO_MAX_DETS), max(most, top)
    return images, most if images else 0


def coco_max_dets_note(images: int, most: int) -> str:
    """What ``over_coco_max_dets`` means for the numbers, in one line."""
    return (f"{images} image(s) hold more than {COCO_MAX_DETS} objects of one class (up to {most}): COCO AP and AR "
            f"score each image's best {COCO_MAX_DETS} detections per class (pycocotools' maxDets), so on those images "
            f"they stay below 1 even for perfect detections (recall at most {COCO_MAX_DETS}/{most} on the most crowded); "
            "`retinanet eval --voc` adds a VOC AP, which scores every detection")
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class CocoEvaluation:
    """Everything one COCOeval run gives.

    Attributes:
        metrics: the 12 numbers named by ``METRIC_NAMES`` (-1.0 where undefined).
        per_class: one ``{"class", "id", "AP", "AP50"}`` per class id (-1.0 for a class without
            ground truth).
        summary_text: the 12 lines exactly as pycocotools prints them.
        precision: ``[T=10, R=101, K, A=4, M=3]`` interpolated precision (-1 where undefined),
            COCOeval's ``eval["precision"]``; K follows ``class_ids`` sorted.
        recall: ``[T, K, A, M]`` COCOeval's ``eval["recall"]``.
        class_ids: the K sorted class ids.
        detections: the detections evaluated, in the COCO results format (every class's).
    """

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    summary_text: str
    precision: np.ndarray
    recall: np.ndarray
    class_ids: list[int]
    detections: CocoResults | None = field(default=None, repr=False)

    def pr_curves(self, iou: float = 0.5) -> dict[str, Any]:
        """Precision at the 101 COCO recall points (area all, 100 dets) per class at ``iou``.

        Returns:
            ``{"iou": iou, "recall": [101], "precision": {class name: [101]}}``; classes without
            ground truth are left out (their precision is -1 throughout).
        """
        t = int(np.argmin(np.abs(IOU_THRESHOLDS - iou)))
        curves = {}
        for k, row in enumerate(self.per_class):
            p = self.precision[t, :, k, 0, -1]
            if (p > -1).any():
                curves[row["class"]] = [round(float(v), 6) for v in p]
        return {"iou": float(IOU_THRESHOLDS[t]), "recall": [round(float(r), 2) for r in RECALL_THRESHOLDS], "precision": curves}


def as_array(x: Any, shape_tail: tuple[int, ...] = (), dtype=np.float64) -> np.ndarray:
    """numpy copy of a tensor/list/array, reshaped to ``[-1, *shape_tail]`` (empty stays empty).

    Reads the fields of the per-image records above (also used by ``voc_eval``)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape((-1, *shape_tail))


def xyxy_to_xywh(boxes: Any) -> np.ndarray:
    """``[N, 4]`` continuous ``xyxy`` -> COCO ``[N, 4]`` ``[x, y, w, h]`` (float64)."""
    b = as_array(boxes, (4,))
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def _lengths_agree(item: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """One image's per-object arrays are concatenated with every other image's: a length that
    differs would pair one image's boxes with the next one's labels, so it is refused."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"image {item.get('image_id')}: per-object arrays of different lengths {lengths}")


def coco_ground_truth(gt: Sequence[dict[str, Any]], class_ids: Sequence[int], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """In-memory COCO dataset dict of ``gt`` (see the module docstring for the per-image format).

    Annotation ids start at 1 (COCOeval treats id 0 as "unmatched"). Ignored objects become
    ``iscrowd=1``; ``area`` is the item's ``areas`` when given (COCO's stated areas, which its
    size ranges are judged by), else the box area ``w * h``. Built from one concatenation of
    every image's arrays (one ``tolist`` per column, not one per image).
    """
    names = list(class_names) if class_names is not None else [f"class {c}" for c in class_ids]
    images, boxes, labels, ignore, areas = [], [], [], [], []
    for item in gt:
        xywh = xyxy_to_xywh(item["boxes"])
        lab = as_array(item["labels"], dtype=np.int64).ravel()
        ign = as_array(item["ignore"], dtype=bool).ravel() if item.get("ignore") is not None else np.zeros(len(lab), bool)
        area = as_array(item["areas"]).ravel() if item.get("areas") is not None else xywh[:, 2] * xywh[:, 3]
        _lengths_agree(item, {"boxes": xywh, "labels": lab, "ignore": ign, "areas": area})
        images.append({"id": int(item["image_id"]), "height": int(item.get("height", 0)), "width": int(item.get("width", 0))})
        boxes.append(xywh), labels.append(lab), ignore.append(ign), areas.append(area)
    image_of = np.repeat([im["id"] for im in images], [len(lab) for lab in labels]).astype(np.int64)
    columns = zip(image_of.tolist(), _joined(labels, np.int64).tolist(), _joined(boxes, np.float64, (4,)).tolist(),
                  _joined(areas, np.float64).tolist(), _joined(ignore, np.int64).tolist())
    annotations = [{"id": k, "image_id": i, "category_id": c, "bbox": box, "area": a, "iscrowd": crowd}
                   for k, (i, c, box, a, crowd) in enumerate(columns, 1)]
    categories = [{"id": int(c), "name": str(n)} for c, n in zip(class_ids, names)]
    return {"info": {}, "images": images, "annotations": annotations, "categories": categories}


def _joined(parts: list[np.ndarray], dtype, tail: tuple[int, ...] = ()) -> np.ndarray:
    """Every image's array in one (an empty ``[0, *tail]`` one for no image)."""
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros((0, *tail), dtype)


JSON_ROWS = 50_000  # detections turned into dicts (and JSON text) at a time


@dataclass(frozen=True, eq=False)
class CocoResults(Sequence):
    """Detections in the COCO results format, held as columns: a read-only sequence of
    ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts made when read.

    One ``[N, 4]`` float64 array instead of N dicts (27 MiB, not 205 MiB, at 500,000
    detections); ``write_json`` writes exactly ``json.dumps(list(results))``.

    Attributes:
        image_id: ``[N]`` int64.
        category_id: ``[N]`` int64.
        bbox: ``[N, 4]`` float64 ``[x, y, w, h]``.
        score: ``[N]`` float64.
    """

    image_id: np.ndarray
    category_id: np.ndarray
    bbox: np.ndarray
    score: np.ndarray

    @classmethod
    def from_dicts(cls, results: Sequence[dict[str, Any]]) -> CocoResults:
        """Columns of a list of COCO result dicts."""
        if isinstance(results, CocoResults):
            return results
        return cls(np.array([r["image_id"] for r in results], dtype=np.int64).reshape(-1),
                   np.array([r["category_id"] for r in results], dtype=np.int64).reshape(-1),
                   np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4),
                   np.array([r["score"] for r in results], dtype=np.float64).reshape(-1))

    def __len__(self) -> int:
        return len(self.score)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.to_list(index)
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"detection {index} of {len(self)}")
        return self.to_list(slice(index, index + 1 or None))[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self), JSON_ROWS):
            yield from self.to_list(slice(start, start + JSON_ROWS))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CocoResults):
            return all(np.array_equal(getattr(self, k), getattr(other, k)) for k in ("image_id", "category_id", "bbox", "score"))
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None

    def to_list(self, rows: slice | np.ndarray = slice(None)) -> list[dict[str, Any]]:
        """The result dicts of ``rows`` (all by default), each column turned to Python numbers once."""
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in
                zip(self.image_id[rows].tolist(), self.category_id[rows].tolist(), self.bbox[rows].tolist(), self.score[rows].tolist())]

    def with_category_ids(self, category_ids: dict[int, int]) -> CocoResults:
        """The same detections with category ids mapped by ``category_ids`` (ids it lacks kept)."""
        keys = np.unique(self.category_id)
        mapped = np.array([category_ids.get(int(k), int(k)) for k in keys], dtype=np.int64)
        return CocoResults(self.image_id, mapped[np.searchsorted(keys, self.category_id)], self.bbox, self.score)

    def write_json(self, f: IO[bytes]) -> None:
        """Write ``json.dumps(list(self))`` to ``f`` (binary), ``JSON_ROWS`` detections at a time."""
        f.write(b"[")
        for start in range(0, len(self), JSON_ROWS):
            f.write((", " if start else "").encode() + json.dumps(self.to_list(slice(start, start + JSON_ROWS)))[1:-1].encode())
        f.write(b"]")


def detection_columns(dets: Sequence[dict[str, Any]]) -> CocoResults:
    """Every image's detections (module docstring format) as one ``CocoResults``, in the order
    given (image by image, each image's in its own order)."""
    image_ids, boxes, scores, labels = [], [], [], []
    for item in dets:
        xywh = xyxy_to_xywh(item["boxes"])
        sc = as_array(item["scores"]).ravel()
        lab = as_array(item["labels"], dtype=np.int64).ravel()
        _lengths_agree(item, {"boxes": xywh, "scores": sc, "labels": lab})
        image_ids.append(int(item["image_id"])), boxes.append(xywh), scores.append(sc), labels.append(lab)
    image_of = np.repeat(np.array(image_ids, dtype=np.int64), [len(s) for s in scores])
    return CocoResults(image_of, _joined(labels, np.int64), _joined(boxes, np.float64, (4,)), _joined(scores, np.float64))


def coco_results(dets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Detections in the COCO results format: ``[{"image_id", "category_id", "bbox", "score"}]``.

    Values are not rounded, so a written ``detections.json`` re-evaluates to the same numbers.
    """
    return detection_columns(dets).to_list()


def result_annotations(results: CocoResults, rows: np.ndarray) -> list[dict[str, Any]]:
    """The annotations pycocotools' ``COCO.loadRes`` makes of results ``rows`` (bbox results):
    ``area`` = w * h, ``id`` = position in ``results`` + 1, ``iscrowd`` = 0; without the
    ``segmentation`` polygon it adds, which bbox evaluation never reads."""
    bbox = results.bbox[rows]
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "id": k, "iscrowd": 0} for i, c, b, s, a, k in
            zip(results.image_id[rows].tolist(), results.category_id[rows].tolist(), bbox.tolist(), results.score[rows].tolist(),
                (bbox[:, 2] * bbox[:, 3]).tolist(), (np.asarray(rows) + 1).tolist())]


def class_counts(labels: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """How many of ``labels`` each of ``class_ids`` has (``[K]`` int64)."""
    counts = dict(zip(*(a.tolist() for a in np.unique(labels, return_counts=True))))
    return np.array([counts.get(int(c), 0) for c in class_ids], dtype=np.int64)


def category_chunks(class_ids: Sequence[int], sizes: Sequence[int], budget: int) -> list[list[int]]:
    """``class_ids`` (in order) cut into consecutive runs of at most ``budget`` annotations
    (``sizes``: ground truth + detections per class); a class larger than ``budget`` is a run alone."""
    chunks, total = [], 0
    for cid, size in zip(class_ids, sizes):
        if not chunks or total + size > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(int(cid))
        total += int(size)
    return chunks


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside (on again after, if it was on).

    COCOeval makes millions of small dicts and arrays and frees them all at the end, none in a
    reference cycle: each collection the allocations set off walks every one of them again."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


BACKENDS = ("pycocotools", "faster_coco_eval")


def check_backend(backend: str | None) -> None:
    """Refuse a backend that is unknown or not installed now, not after a training epoch."""
    _load_backend(backend)


def _load_backend(backend: str | None):
    """(COCO class, COCOeval class, name) of the requested implementation (default pycocotools)."""
    if backend not in (None, *BACKENDS):
        raise ValueError(f"unknown COCO evaluation backend {backend!r}; expected one of {BACKENDS}")
    if backend == "faster_coco_eval":
        try:
            import faster_coco_eval
        except ImportError:
            raise RetinaNetError("the faster_coco_eval COCO backend needs the faster-coco-eval package: "
                                 "pip install 'retinanet[fast-eval]' (or use the default, pycocotools)") from None
        return faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster, "faster_coco_eval"
    return COCO, COCOeval, "pycocotools"


CHUNK_ANNOTATIONS = 30_000  # ground truth + detections given to one COCOeval run (run_cocoeval)


def run_cocoeval(dataset: dict[str, Any], results: CocoResults | Sequence[dict[str, Any]], backend: str | None = None,
                 chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run COCOeval (bbox) and return its ``(precision [T,R,K,A,M], recall [T,K,A,M])`` arrays.

    The classes are evaluated a run of them at a time (``category_chunks``, about ``chunk``
    annotations each), each run by its own COCOeval, and the arrays joined along K. Every number
    COCOeval computes for a class reads that class's annotations only (``useCats``), so the
    arrays are those of one run over every class, bit for bit; memory holds one run's per-image
    records (COCOeval's ``evalImgs``, most of its memory) at a time. The results' COCO is made
    as ``loadRes`` makes it (``result_annotations``).

    Args:
        dataset: COCO ground-truth dict (``coco_ground_truth``); it is not modified.
        results: the detections (``detection_columns``, or a COCO results list); detections of
            classes not in ``dataset`` are left out, as COCOeval leaves them.
        backend: "pycocotools" (default, the reference) or "faster_coco_eval" (faster, equal up to
            the last bit of a double; see the module docstring).
        chunk: annotations per COCOeval run (a class with more is a run alone); None:
            ``CHUNK_ANNOTATIONS``.
    Raises:
        ValueError: detections of an image not in ``dataset`` (pycocotools' loadRes asserts it).
    """
    coco_cls, eval_cls, name = _load_backend(backend)
    results = CocoResults.from_dicts(results)
    images = dataset["images"]
    unknown = np.setdiff1d(results.image_id, [im["id"] for im in images])
    if unknown.size:
        raise ValueError(f"detections of {unknown.size} image id(s) not in the ground truth: {unknown[:5].tolist()}")
    categories = sorted(dataset["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    shape = (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(ids), len(_AREA_LABELS), len(_MAX_DETS))
    precision, recall = -np.ones(shape), -np.ones(shape[:1] + shape[2:])
    if not images:  # COCOeval leaves empty arrays: no number is defined
        return precision, recall
    gt_labels = [a["category_id"] for a in dataset["annotations"]]
    sizes = class_counts(np.array(gt_labels, dtype=np.int64), ids) + class_counts(results.category_id, ids)
    quiet = {"print_function": lambda *a, **k: None} if name == "faster_coco_eval" else {}
    k = 0
    with contextlib.redirect_stdout(io.StringIO()), gc_paused():  # pycocotools prints its progress
        for run in category_chunks(ids, sizes, CHUNK_ANNOTATIONS if chunk is None else chunk):
            cats, in_run = categories[k:k + len(run)], set(run)
            gt = coco_cls(**quiet)
            gt.dataset = {"info": dataset.get("info", {}), "images": list(images), "categories": list(cats),
                          "annotations": [dict(a) for a, c in zip(dataset["annotations"], gt_labels) if c in in_run]}
            gt.createIndex()
            dt = coco_cls(**quiet)
            dt.dataset = {"images": list(images), "categories": [dict(c) for c in cats],
                          "annotations": result_annotations(results, np.flatnonzero(np.isin(results.category_id, run)))}
            dt.createIndex()
            ev = eval_cls(gt, dt, "bbox", **quiet)
            ev.evaluate()
            ev.accumulate()
            precision[:, :, k:k + len(run)] = ev.eval["precision"]
            recall[:, k:k + len(run)] = ev.eval["recall"]
            k += len(run)
            del gt, dt, ev  # before the next run's
    return precision, recall


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """The 12 numbers of ``COCOeval.summarize`` (mean over entries > -1, else -1)."""
    metrics = {}
    for name, (is_ap, iou, area, max_dets) in zip(METRIC_NAMES, _SUMMARY_SPEC):
        a, m = _AREA_LABELS.index(area), _MAX_DETS.index(max_dets)
        s = precision[..., a, m] if is_ap else recall[..., a, m]
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        valid = s[s > -1]
        metrics[name] = float(np.mean(valid)) if valid.size else -1.0
    return metrics


def summary_text(metrics: dict[str, float]) -> str:
    """The 12 lines pycocotools prints for ``metrics`` (same format string, same order)."""
    line = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    lines = []
    for name, (is_ap, iou, area, max_dets) in zip(METRIC_NAMES, _SUMMARY_SPEC):
        title, kind = ("Average Precision", "(AP)") if is_ap else ("Average Recall", "(AR)")
        iou_text = f"{IOU_THRESHOLDS[0]:0.2f}:{IOU_THRESHOLDS[-1]:0.2f}" if iou is None else f"{iou:0.2f}"
        lines.append(line.format(title, kind, iou_text, area, max_dets, metrics[name]))
    return "\n".join(lines)


def per_class_ap(precision: np.ndarray, class_ids: Sequence[int], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """AP (IoU 0.50:0.95) and AP50 per class from COCOeval's precision array (area all, 100 dets).

    Args:
        precision: ``[T, R, K, A, M]``, K in the order of ``class_ids`` (sorted ids).
    Returns:
        ``[{"class": name, "id": id, "AP": float, "AP50": float}]``, -1.0 where undefined.
    """

    def mean_valid(s: np.ndarray) -> float:
        valid = s[s > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    return [
        {
            "class": str(name),
            "id": int(cid),
            "AP": mean_valid(precision[:, :, k, 0, -1]),
            "AP50": mean_valid(precision[0, :, k, 0, -1]),
        }
        for k, (cid, name) in enumerate(zip(class_ids, class_names))
    ]


def per_class_table(per_class: Sequence[dict[str, Any]], voc: dict[str, Any] | None = None) -> str:
    """A plain-text table of the per-class AP (fractions, as COCO's summary and ``train`` print
    them), with VOC AP columns when given; "-" for a class without ground truth."""
    width = max([len("class")] + [len(r["class"]) for r in per_class])
    voc_rows = {r["class"]: r for r in (voc or {}).get("per_class", [])}
    head = f"{'class':<{width}}  {'id':>4}  {'AP':>6}  {'AP50':>6}"
    if voc:
        head += f"  {'VOC07':>6}  {'VOC12':>6}"

    def pct(v: float) -> str:
        return f"{v:6.3f}" if v >= 0 else f"{'-':>6}"

    lines = [head, "-" * len(head)]
    for r in per_class:
        text = f"{r['class']:<{width}}  {r['id']:>4}  {pct(r['AP'])}  {pct(r['AP50'])}"
        if voc:
            v = voc_rows.get(r["class"], {})
            text += f"  {pct(v.get('AP50_07', -1.0))}  {pct(v.get('AP50', -1.0))}"
        lines.append(text)
    return "\n".join(lines)


def evaluate_coco(
    gt: Sequence[dict[str, Any]],
    dets: Sequence[dict[str, Any]],
    class_ids: Sequence[int],
    class_names: Sequence[str] | None = None,
    backend: str | None = None,
) -> CocoEvaluation:
    """COCO evaluation of per-image detections against per-image ground truth.

    Args:
        gt: one dict per evaluated image (an image without objects still counts: its detections
            are false positives). Boxes ``[N, 4]`` xyxy, labels ``[N]`` class ids.
        dets: per-image detections; images missing here have no detections.
        class_ids: the class ids evaluated (COCO category ids); detections of other ids are
            ignored, a class without ground truth gets -1.
        class_names: names in the order of ``class_ids`` (default "class N").
        backend: see ``run_cocoeval``.
    """
    order = sorted(range(len(class_ids)), key=lambda i: int(class_ids[i]))
    ids = [int(class_ids[i]) for i in order]
    names = [str(class_names[i]) if class_names is not None else f"class {class_ids[i]}" for i in order]
    results = detection_columns(dets)
    precision, recall = run_cocoeval(coco_ground_truth(gt, ids, names), results, backend)
    metrics = summarize(precision, recall)
    return CocoEvaluation(metrics, per_class_ap(precision, ids, names), summary_text(metrics), precision, recall, ids, results)


def coco_metrics(
    gt: Sequence[dict[str, Any]],
    dets: Sequence[dict[str, Any]],
    class_ids: Sequence[int],
    class_names: Sequence[str] | None = None,
    backend: str | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]], str]:
    """``(metrics, per_class, summary_text)`` of ``evaluate_coco``; no model needed."""
    ev = evaluate_coco(gt, dets, class_ids, class_names, backend)
    return ev.metrics, ev.per_class, ev.summary_text
