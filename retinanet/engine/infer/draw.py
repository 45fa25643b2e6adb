"""Draw detections on an image: a box per object, and a readable "name score" label on a filled
background in a colour of its class (PIL ImageDraw; label size follows the image size)."""

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


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def draw_detections(
    image: Image.Image,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    names: Sequence[str],
) -> Image.Image:
    """A copy of ``image`` with the detections drawn, highest score on top.

    Args:
        image: the original image (any mode; drawn as RGB).
        boxes: ``[K, 4]`` continuous ``xyxy`` pixels of ``image``.
        labels: ``[K]`` class ids (choose the colour); scores: ``[K]`` in [0, 1];
        names: ``[K]`` class names written in the labels.
    Returns:
        A new RGB image of the same size.
    """
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    w, h = out.size
    line = max(1, round(min(w, h) / 250))
    font = _font(max(10, round(min(w, h) / 40)))
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")  # low first, high on top
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        color = class_color(int(labels[i]))
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=line)
        text = f"{names[i]} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * line + 2, bottom - top + 2 * line + 2
        ty = y1 - th if y1 - th >= 0 else min(y1, h - th)  # above the box, else inside it
        tx = min(max(0.0, x1), max(0.0, w - tw))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=color)
        draw.text((tx + line + 1 - left, ty + line + 1 - top), text, fill=_text_color(color), font=font)
    return out
