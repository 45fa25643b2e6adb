"""``draw.draw_detections``: line and label sizes bounded by the boxes, labels only where they fit,
the drawing options; pixel checks on black images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from retinanet.engine.infer.draw import class_color, draw_detections

BLACK = (0, 0, 0)


def drawn(size, boxes, labels=None, scores=None, names=None, **kwargs):
    boxes = np.asarray(boxes, dtype=np.float64)
    k = len(boxes)
    labels = labels or [1] * k
    scores = scores or [0.9] * k
    names = names or ["cat"] * k
    left_out: list[int] = []
    out = draw_detections(Image.new("RGB", size, BLACK), boxes, labels, scores, names, left_out=left_out, **kwargs)
    return np.asarray(out), left_out


def is_color(a: np.ndarray, color) -> bool:
    return tuple(int(v) for v in a) == tuple(color)


def shelf(w=512, h=384, bw=26, bh=30) -> np.ndarray:
    """A shelf of touching boxes filling the image."""
    return np.array([[x, y, x + bw, y + bh] for y in range(0, h - bh + 1, bh) for x in range(0, w - bw + 1, bw)], dtype=np.float64)


def test_box_lines_are_at_most_a_tenth_of_the_box_at_least_1_px():
    """4000x3000: the image's line is 12 px, which filled a 15 px box; now 1 px there, 12 px on a 300 px box."""
    a, _ = drawn((4000, 3000), [[2000, 1500, 2015, 1515], [500, 500, 800, 800]], show_labels=False)
    red = class_color(1)
    assert is_color(a[1507, 2000], red) and is_color(a[1507, 2001], BLACK)  # 1 px: the object inside stays visible
    assert is_color(a[650, 511], red) and is_color(a[650, 512], BLACK)  # 12 px = min(3000 / 250, 300 / 10)


def test_label_font_is_at_most_a_third_of_the_median_box_height():
    """Spread 60 px boxes on a 4000x3000 image: labels about 20 px tall, not the image's 75 px font."""
    boxes = [[x, y, x + 60, y + 60] for x in range(200, 3800, 400) for y in (500, 1500, 2500)]
    a, left_out = drawn((4000, 3000), boxes)
    assert left_out == []
    x1, y1 = 200, 500
    column = a[:y1, x1 + 2]  # above the box: the label, then black
    height = int(np.argmax(~np.all(column[::-1] == class_color(1), axis=1)))
    assert 10 <= height <= 30  # font 20 + padding; it was ~90


def test_crowded_boxes_get_labels_only_where_they_fit():
    """A shelf of 26x30 touching boxes: a label would cover a neighbour's box, so almost all are left
    out (and listed); those drawn cover at most LABEL_COVER of any box and none overlap."""
    boxes = shelf()
    a, left_out = drawn((512, 384), boxes, labels=[1 + i % 2 for i in range(len(boxes))])
    assert len(left_out) >= 0.9 * len(boxes)
    interior = np.zeros(a.shape[:2], bool)  # pixels inside boxes, off their 1-2 px lines
    for x1, y1, x2, y2 in boxes.astype(int):
        interior[y1 + 3:y2 - 3, x1 + 3:x2 - 3] = True
    assert (a[interior] != 0).any(axis=1).mean() < 0.05  # the objects stay visible (nearly all labels covered them)


def test_tiny_objects_on_a_large_image_get_small_labels_beside_them():
    """The QA aerial case: 8-20 px objects on 4000x3000 (a 75 px font before). Every label drawn is of
    the smallest font, sits outside other boxes and fits; the objects' interiors are not covered."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [3980, 2980], (400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 20, (400, 2))], axis=1)
    a, left_out = drawn((4000, 3000), boxes, labels=[1 + i % 2 for i in range(400)])
    assert len(left_out) < 40  # sparse: most fit
    covered = [i for i, (x1, y1, x2, y2) in enumerate(boxes) if (a[int(y1) + 2:int(y2) - 1, int(x1) + 2:int(x2) - 1] != 0).any()]
    assert len(covered) <= 0.05 * len(boxes)  # 1 px lines and labels beside the boxes leave the objects visible


def test_labels_never_overlap_each_other():
    """Two boxes with the same corner: the better label goes above, the other inside its box
    (before, it was drawn under the first and hidden)."""
    box = [100, 100, 300, 300]
    a, left_out = drawn((640, 480), [box, box], labels=[1, 2], scores=[0.9, 0.5], names=["cat", "dog"])
    assert left_out == []
    assert is_color(a[97, 103], class_color(1))  # above the box: the best one's label
    assert is_color(a[101, 120], class_color(2))  # inside the top of the box, over the lines: the other's


def test_ordinary_photo_keeps_its_look():
    """640x480 with 3 boxes: the image's 2 px lines, 12 px font, each label above its box."""
    boxes = [[40, 30, 250, 400], [300, 120, 420, 300], [430, 200, 620, 470]]
    a, left_out = drawn((640, 480), boxes, labels=[1, 2, 3], scores=[0.97, 0.81, 0.45], names=["person", "dog", "bicycle"])
    assert left_out == []
    for (x1, y1, x2, y2), label in zip(boxes, (1, 2, 3)):
        color = class_color(label)
        assert is_color(a[y1 + 100, x1 + 1], color) and is_color(a[y1 + 100, x1 + 2], BLACK)  # 2 px line
        column = a[:y1, x1 + 1]
        assert 15 <= int(np.argmax(~np.all(column[::-1] == color, axis=1))) <= 20  # the label above: 12 px font + padding


def test_line_width_option_sets_every_line():
    a, _ = drawn((640, 480), [[100, 100, 130, 130], [200, 100, 400, 300]], line_width=5, show_labels=False)
    red = class_color(1)
    for x1, y in ((100, 115), (200, 200)):
        assert is_color(a[y, x1 + 4], red) and is_color(a[y, x1 + 5], BLACK)


def test_hide_labels_draws_boxes_only():
    boxes = [[100, 100, 200, 200], [300, 100, 400, 200]]
    a, left_out = drawn((640, 480), boxes, show_labels=False)
    assert left_out == []  # none left out: none asked for
    lines = np.zeros(a.shape[:2], bool)
    for x1, y1, x2, y2 in boxes:
        lines[y1:y2, x1:x2] = True
        lines[y1 + 2:y2 - 2, x1 + 2:x2 - 2] = False
    assert (a[lines] != 0).all() and (a[~lines] == 0).all()


def test_hide_conf_writes_the_name_only():
    box = [[100, 100, 300, 300]]
    with_score, _ = drawn((640, 480), box)
    name_only, _ = drawn((640, 480), box, show_conf=False)
    row = lambda a: int(np.all(a[98, :] == class_color(1), axis=1).sum())  # the label's width, in its padding
    assert 20 < row(name_only) < row(with_score) - 15  # " 0.90" less


def test_a_label_goes_below_its_box_when_above_and_inside_do_not_fit():
    """Two rows of touching 30 px boxes: a second-row label above would cover a first-row box, inside
    its own box a half of it; below the box it fits."""
    boxes = [[50, 100, 80, 130], [50, 130, 80, 160]]
    a, left_out = drawn((640, 480), boxes, labels=[1, 2], scores=[0.9, 0.5], names=["cat", "dog"])
    assert left_out == []
    assert is_color(a[97, 52], class_color(1)) and is_color(a[162, 52], class_color(2))
    assert is_color(a[115, 55], BLACK) and is_color(a[145, 55], BLACK)  # no label inside either box


def test_an_ordinary_image_keeps_every_label_a_crowded_one_does_not():
    """4 objects on 160x160, the best one's label would cover a third of its neighbour: not a crowd
    (1 of 4 left out at first), so placed again allowing up to half a box: all 4 drawn, none hidden."""
    boxes = [[60, 110, 108, 157], [70, 70, 114, 115], [9, 29, 20, 41], [9, 117, 27, 134]]
    a, left_out = drawn((160, 160), boxes, labels=[1, 2, 3, 4], scores=[0.95, 0.8, 0.65, 0.5],
                        names=["circle", "star", "square", "circle"])
    assert left_out == []
    assert is_color(a[108, 62], class_color(1)) and is_color(a[136, 10], class_color(4))  # above; below its box
    crowd = shelf()  # the same rule on a crowd: labels left out, not piled on the boxes
    _, left_out = drawn((512, 384), crowd)
    assert len(left_out) > 0.9 * len(crowd)
