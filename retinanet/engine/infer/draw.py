"""Draw detections on an image: a box per object, and a readable "name score" label on a filled
background in a colour of its class (PIL ImageDraw).

Sizes follow the image (a line of ``min(w, h) / 250`` px, a font of ``min(w, h) / 40``) but never
exceed the boxes: a box line is at most ``LINE_FRACTION`` of that box's short side (at least 1 px),
the label font at most ``FONT_FRACTION`` of the median box height (at least ``MIN_FONT``).

Labels are placed best score first, inside the image and over no other label: above the box, else
inside its top, else below it, the first of these places that covers at most ``LABEL_COVER`` of
every box's area. When that leaves out more than ``CROWDED`` of the labels, the image is crowded (or
its objects smaller than a label) and those are the labels drawn, only where they fit. Otherwise the
few left out were conflicts between neighbours, and the labels are placed again with a fallback:
failing such a place, the one covering the least, if at most ``LABEL_COVER_FEW`` of any box. A
label that fits nowhere is left out (its box keeps the class colour; the caller hears how many). An
ordinary photo with a few objects looks as before, except that labels no longer hide each other
and no box line crosses a label (boxes are drawn first).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont


# 20 colours of maximal mutual contrast (Sasha Trubetskoy's list), one per class id; ids past 20
# reuse them a shade darker per round, so COCO's 80 classes stay distinguishable side by side.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)


def class_color(class_id: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class id (ids 1..20 all different)."""
    round_, index = divmod(max(int(class_id) - 1, 0), len(_PALETTE))
    shade = 1.0 - 0.2 * (round_ % 4)
    return tuple(int(c * shade) for c in _PALETTE[index])  # type: ignore[return-value]


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (ITU-R 601 luma)."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


LINE_FRACTION = 0.1  # a box line is at most this share of the box's short side (at least 1 px)
FONT_FRACTION = 1 / 3  # the label font is at most this share of the median box height...
MIN_FONT = 10  # ...and at least this (px): smaller text is hard to read at 100 %
LABEL_COVER = 0.25  # a label goes to the first place that covers at most this share of every box's area...
CROWDED = 0.25  # ...and if that leaves out at most this share of the labels (not a crowded image), they are placed
LABEL_COVER_FEW = 0.5  # again: failing such a place, the one covering the least, if at most this share of any box


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _sizes(size: tuple[int, int], boxes: np.ndarray, line_width: int | None = None) -> tuple[np.ndarray, int, int]:
    """Box line widths ``[K]``, the label font size and the padding around a label's text for
    ``boxes`` ``[K, 4]`` on an image of ``size`` ``(w, h)``: the image's own sizes, bounded by the
    boxes' (module docstring); ``line_width`` given: every line that wide."""
    w, h = size
    bw, bh = (boxes[:, 2] - boxes[:, 0]).clip(0), (boxes[:, 3] - boxes[:, 1]).clip(0)
    line = max(1, round(min(w, h) / 250))
    font = max(MIN_FONT, round(min(w, h) / 40))
    if len(boxes):
        font = min(font, max(MIN_FONT, round(float(np.median(bh)) * FONT_FRACTION)))
    pad = min(line, round(font * 0.16)) + 1  # the image's line + 1 (as before), less with a smaller font
    if line_width is not None:
        return np.full(len(boxes), int(line_width)), font, pad
    return np.clip(np.floor(np.minimum(bw, bh) * LINE_FRACTION), 1, line).astype(int), font, pad


def _place_labels(boxes: np.ndarray, sizes: np.ndarray, order: np.ndarray, size: tuple[int, int],
                  cover: float) -> dict[int, tuple[float, float]]:
    """The top-left corner of each label that fits (module docstring), covering at most ``cover`` of
    any box, placed in ``order`` (best first): ``{box index: (x, y)}``. ``sizes`` ``[K, 2]``: label
    width and height."""
    w, h = size
    x1, y1, x2, y2 = boxes.T
    area = np.maximum((x2 - x1) * (y2 - y1), 1.0)
    placed = np.empty((len(boxes), 4))  # rectangles of the labels placed so far
    n = 0
    at: dict[int, tuple[float, float]] = {}
    for i in order.tolist():
        tw, th = sizes[i]
        if tw > w or th > h:
            continue
        tx = min(max(0.0, x1[i]), w - tw)
        # boxes near any of the three places (one pass over all boxes), then each place in turn
        near = np.flatnonzero((x1 < tx + tw) & (x2 > tx) & (y1 < y2[i] + th) & (y2 > y1[i] - th))
        best, best_cover = None, cover
        for ty in (y1[i] - th, y1[i], y2[i]):  # above, inside the top, below
            if ty < 0 or ty + th > h:
                continue
            rx, ry = tx + tw, ty + th  # (PIL fills 1 px more: padding another label may cover)
            r = placed[:n]
            if n and np.any((r[:, 0] < rx) & (r[:, 2] > tx) & (r[:, 1] < ry) & (r[:, 3] > ty)):
                continue
            ox = np.minimum(x2[near], rx) - np.maximum(x1[near], tx)
            oy = np.minimum(y2[near], ry) - np.maximum(y1[near], ty)
            covered = float(np.max(ox.clip(0) * oy.clip(0) / area[near], initial=0.0))  # of the box it covers most
            if covered <= best_cover:
                best, best_cover = ty, covered
                if covered <= LABEL_COVER:
                    break
        if best is not None:
            placed[n] = (tx, best, tx + tw, best + th)
            n += 1
            at[i] = (tx, best)
    return at


def draw_detections(
    image: Image.Image,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    names: Sequence[str],
    *,
    line_width: int | None = None,
    show_labels: bool = True,
    show_conf: bool = True,
    left_out: list[int] | None = None,
) -> Image.Image:
    """A copy of ``image`` with the detections drawn, highest score on top.

    Args:
        image: the original image (any mode; drawn as RGB).
        boxes: ``[K, 4]`` continuous ``xyxy`` pixels of ``image``.
        labels: ``[K]`` class ids (choose the colour); scores: ``[K]`` in [0, 1];
        names: ``[K]`` class names written in the labels.
        line_width: box lines this many px wide (default: by the image and each box, module docstring).
        show_labels: write the labels (only where they fit); show_conf: the score in each label.
        left_out: if given, the indices of the detections whose label did not fit are appended.
    Returns:
        A new RGB image of the same size.
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lines, font_size, pad = _sizes(out.size, xyxy, line_width)
    font = _font(font_size)
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")  # low first, high on top
    for i in order.tolist():
        x1, y1, x2, y2 = xyxy[i].tolist()
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=class_color(int(labels[i])), width=int(lines[i]))
    if not show_labels or not len(xyxy):
        return out
    texts = [f"{names[i]} {float(scores[i]):.2f}" if show_conf else str(names[i]) for i in range(len(xyxy))]
    extent = {t: draw.textbbox((0, 0), t, font=font) for t in set(texts)}  # (left, top, right, bottom) per text
    sizes = np.array([(r - l + 2 * pad, b - t + 2 * pad) for l, t, r, b in (extent[t] for t in texts)], dtype=np.float64)
    at = _place_labels(xyxy, sizes, order[::-1], out.size, LABEL_COVER)
    if 0 < len(xyxy) - len(at) <= CROWDED * len(xyxy):  # a few labels did not fit, in an image not crowded
        at = max(at, _place_labels(xyxy, sizes, order[::-1], out.size, LABEL_COVER_FEW), key=len)
    if left_out is not None:
        left_out.extend(sorted(set(range(len(xyxy))) - at.keys()))
    for i in order.tolist():
        if i in at:
            tx, ty = at[i]
            color = class_color(int(labels[i]))
            left, top = extent[texts[i]][:2]
            draw.rectangle([tx, ty, tx + sizes[i][0], ty + sizes[i][1]], fill=color)
            draw.text((tx + pad - left, ty + pad - top), texts[i], fill=_text_color(color), font=font)
    return out
