"""``Record``: one annotated image as read from disk, before loading and resizing."""

from __future__ import annotations

import dataclasses
import math
import operator
import pickle
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Record:
    """One image and its objects in the original pixel frame.

    Attributes:
        file: image path.
        boxes: ``[N, 4]`` float32 xyxy, continuous pixels of the original image.
        labels: ``[N]`` int64 class ids (>= 1).
        ignore: ``[N]`` bool, VOC ``difficult`` / COCO ``iscrowd``.
        image_id: int, unique within a split.
        size: ``(height, width)`` stated by the annotation, or None when unknown.
        source: annotation file (or "file#id" for COCO), named in messages.
        areas: ``[N]`` float64 object areas the annotation states (COCO's ``area``: the mask's, which
            COCO's small/medium/large ranges are judged by), or None: the box areas.
    """

    file: str
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    image_id: int
    size: tuple[int, int] | None
    source: str
    areas: np.ndarray | None = None


class RecordList(Sequence[Record]):
    """A split's records packed into one numpy byte buffer (plus an offset per record), read back one
    at a time. Loader workers share the buffer with the process that made it: a list of ``Record``
    objects is copied into each forked worker page by page as items touch their reference counts
    (and as the garbage collector walks them), which at 200k images cost about 120 MiB a worker
    (BENCHMARKS.md, "Records in loader workers"); one buffer is never written, so never copied. Read-only:
    a record read is a fresh object each time."""

    def __init__(self, records: Iterable[Record]):
        blobs = [pickle.dumps(_plain(r), protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self._offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
        self._data = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {index} of {n}")
        i %= n
        return _record(pickle.loads(memoryview(self._data)[self._offsets[i]:self._offsets[i + 1]]))

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))


def _plain(r: Record) -> tuple:
    """A record as plain values, each array as ``(dtype, shape, bytes)`` (a few dozen bytes of pickle
    where an array's own takes about 150), and the positions of the arrays."""
    values = [getattr(r, f.name) for f in dataclasses.fields(Record)]
    arrays = tuple(i for i, v in enumerate(values) if isinstance(v, np.ndarray))
    for i in arrays:
        values[i] = (values[i].dtype.str, values[i].shape, values[i].tobytes())
    return tuple(values), arrays


def _record(plain: tuple) -> Record:
    values, arrays = plain
    values = list(values)
    for i in arrays:
        dtype, shape, data = values[i]
        values[i] = np.ndarray(shape, dtype, bytearray(data))  # its own writable copy: 4x faster than frombuffer().copy()
    return Record(*values)


def not_finite(values) -> str | None:
    """The one rule every reader applies to the numbers of an annotation (VOC ``<bndbox>`` and
    ``<size>``, COCO ``bbox``, YOLO lines): infinity and NaN are refused, never clipped to the image
    edge. Returns why ``values`` break it (``"inf is not a finite number"``), or None when they do not."""
    if isinstance(values, (int, float)) and math.isfinite(values):
        return None  # the common cases without numpy: called per number (VOC) or object (COCO) of a dataset
    if isinstance(values, (list, tuple)) and all(isinstance(v, (int, float)) for v in values) and all(map(math.isfinite, values)):
        return None
    bad = [v for v in (float(x) for x in np.asarray(values, np.float64).ravel()) if not math.isfinite(v)]
    return f"{', '.join(dict.fromkeys(map(str, bad)))} is not a finite number" if bad else None


def repeated_objects(labels: np.ndarray, boxes: np.ndarray, flags: np.ndarray | None = None) -> np.ndarray:
    """``[N]`` bool: the objects equal in class, box (``[N, 4]``, the annotation's own numbers) and
    flag (difficult / crowd) to an earlier one. The one rule every reader drops them by, with a
    warning: a box listed twice is two objects, one of them a false negative no detection can match.

    Called once per image of a dataset: 0 or 1 object costs nothing, a few are compared as tuples
    in a set (an ``np.unique(axis=0)`` costs ~100 us whatever N), many by ``np.unique``."""
    n = len(labels)
    if n <= 1:
        return np.zeros(n, bool)
    if n <= _FEW_OBJECTS:
        cols = [labels.reshape(-1).tolist(), *boxes.reshape(-1, 4).T.tolist()]
        if flags is not None:
            cols.append(flags.reshape(-1).tolist())
        seen: set[tuple] = set()
        repeated = np.zeros(n, bool)
        for i, row in enumerate(zip(*cols)):  # float32 -> Python float is exact: as the float64 rows below
            if row in seen:
                repeated[i] = True
            seen.add(row)
        return repeated
    cols = [labels.reshape(-1, 1), boxes.reshape(-1, 4)] + ([flags.reshape(-1, 1)] if flags is not None else [])
    rows = np.concatenate([c.astype(np.float64) for c in cols], axis=1)  # [N, 5 or 6]
    repeated = np.ones(len(rows), bool)
    repeated[np.unique(rows, axis=0, return_index=True)[1]] = False
    return repeated


_FEW_OBJECTS = 64  # up to this many objects, repeated_objects compares tuples in Python


def clip_boxes(boxes: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``[N, 4]`` xyxy boxes to an ``(H, W)`` image.

    Returns:
        (clipped boxes ``[N, 4]``, keep ``[N]`` bool: boxes with positive width and height).
    """
    h, w = hw
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out, keep


def clip_said(boxes: np.ndarray, hw: tuple[int, int], where: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``clip_boxes`` and the messages that say what it changed, each starting with ``where`` (the
    annotation and image): boxes clipped to the ``(H, W)`` image, boxes dropped for having no area
    in it. Used where the size is known only once the image is decoded (the dataset, check-data).

    Returns:
        (clipped boxes ``[N, 4]``, keep ``[N]`` bool, messages).
    """
    clipped, keep = clip_boxes(boxes, hw)
    moved = keep & (clipped != boxes).any(axis=1)
    said = []
    if moved.any():
        said.append(f"{where}: {int(moved.sum())} box(es) extend outside the {hw[1]}x{hw[0]} (WxH) image; clipped: "
                    + _some_boxes(boxes[moved]))
    if not keep.all():
        said.append(f"{where}: dropped {int((~keep).sum())} box(es) with no area inside the {hw[1]}x{hw[0]} (WxH) image: "
                    + _some_boxes(boxes[~keep]))
    return clipped, keep, said


def _some_boxes(boxes: np.ndarray, shown: int = 5) -> str:
    """The first ``shown`` boxes as ``x1,y1,x2,y2`` pixel-edge coordinates (a VOC file's xmin, ymin are
    1 more: its pixels are numbered from 1), then how many more: so the object can be found in its file."""
    text = " ".join("[" + ",".join(f"{v:g}" for v in b.tolist()) + "]" for b in boxes[:shown])
    return text + (f" and {len(boxes) - shown} more" if len(boxes) > shown else "") + " (x1,y1,x2,y2)"


def no_area_reason(box: np.ndarray, hw: tuple[int, int] | None) -> str:
    """Why one xyxy box ``[4]`` (continuous pixels) keeps no area: non-finite, reversed or empty
    sides are named before "outside the image" (formats name their own fields first)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not np.isfinite(box).all():
        return "a coordinate is not a finite number"
    if x2 <= x1:
        return "zero width" if x2 == x1 else f"x1 {x1:g} > x2 {x2:g}"
    if y2 <= y1:
        return "zero height" if y2 == y1 else f"y1 {y1:g} > y2 {y2:g}"
    return "no area inside the image" if hw is None else f"no area inside the {hw[1]}x{hw[0]} (WxH) image"
