"""``retinanet.data.records``: the rules every reader shares."""

from __future__ import annotations

import numpy as np

from retinanet.data import records


def _by_unique(labels, boxes, flags=None):
    """The rule as one ``np.unique`` over the rows: the reference the fast paths must equal."""
    cols = [labels.reshape(-1, 1), boxes.reshape(-1, 4)] + ([flags.reshape(-1, 1)] if flags is not None else [])
    rows = np.concatenate([c.astype(np.float64) for c in cols], axis=1)
    out = np.ones(len(rows), bool)
    if len(rows):
        out[np.unique(rows, axis=0, return_index=True)[1]] = False
    return out


def test_repeated_objects_fast_paths_give_the_rule_of_np_unique():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 3, 7, 64, 65, 300):
        for _ in range(20):
            labels = rng.integers(1, 3, n)
            boxes = rng.integers(0, 3, (n, 4)).astype(np.float32)  # few values: many repeats
            flags = rng.random(n) < 0.5
            assert (records.repeated_objects(labels, boxes) == _by_unique(labels, boxes)).all()
            assert (records.repeated_objects(labels, boxes, flags) == _by_unique(labels, boxes, flags)).all()
    signed_zero = np.array([[0.0, 1, 2, 3], [-0.0, 1, 2, 3]], np.float32)  # equal numbers, as np.unique has them
    assert records.repeated_objects(np.array([1, 1]), signed_zero).tolist() == [False, True]


def test_repeated_objects_of_an_image_with_few_objects_does_not_call_np_unique(monkeypatch):
    """~100 us per image: 6.8 s of 80k YOLO images read (repeated_objects is called per image)."""
    def refuse(*args, **kwargs):
        raise AssertionError("np.unique called for a few objects")
    labels, boxes = np.array([1, 2, 1]), np.array([[0, 0, 5, 5], [0, 0, 5, 5], [0, 0, 5, 5]], np.float32)
    monkeypatch.setattr(np, "unique", refuse)
    assert records.repeated_objects(labels[:0], boxes[:0]).tolist() == []
    assert records.repeated_objects(labels[:1], boxes[:1]).tolist() == [False]
    assert records.repeated_objects(labels, boxes).tolist() == [False, False, True]
    assert records.repeated_objects(labels, boxes, np.array([False, False, True])).tolist() == [False, False, False]
