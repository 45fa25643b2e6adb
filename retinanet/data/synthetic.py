"""The embedded synthetic dataset: coloured shapes on textured, noisy backgrounds, in VOC format.

Four classes (circle, square, star, triangle; ids 1..4 = sorted names, the same map discovery
gives), several colours, sizes from small (< 32 px) to large, overlapping up to a limit so every
object stays identifiable. Boxes are the exact extent of each drawn shape (occluded parts
included, as in VOC). Deterministic: the same seed gives the same bytes.

The large-image variant (``make_synthetic(object_size=(12, 48), objects=100, image_size=3000)``,
``retinanet make-synthetic --large``): images of several thousand pixels crowded with objects of a
fixed pixel range, for tiled prediction and crop training; each shape is drawn on a patch of its own
size, so writing a 3000 px image with 100 objects takes well under a second. 100 objects per image
by default because COCO's metrics count at most 100 detections per image (``maxDets``): with more
objects, AP and AR are capped below 1 for tiled and whole-image prediction alike (``--objects``
goes higher for crowded scenes).

``default_synthetic_root(**options)`` is ``$RETINANET_CACHE/synthetic/<options>`` (default cache
``~/.cache/retinanet``), one folder per (sizes, seed); ``ensure_synthetic(root)`` writes it there once.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from retinanet.data.classes import ClassMap
from retinanet.errors import RetinaNetError

CLASSES = ("circle", "square", "star", "triangle")
COLOURS = ((220, 40, 40), (40, 180, 60), (50, 90, 230), (240, 200, 30), (200, 60, 200), (30, 200, 210), (250, 250, 250), (20, 20, 20))
DEFAULTS = {"num_train": 400, "num_val": 100, "image_size": 256, "seed": 0}
# ``make-synthetic --large``: a few big images crowded with small objects (12..48 px)
LARGE = {"num_train": 8, "num_val": 4, "image_size": 3000, "object_size": (12, 48), "objects": 100}
VERSION = 2  # of the drawing code: part of the cache folder name, so a changed generator never reuses old files
_DONE = ".complete"


def default_synthetic_root(**options) -> Path:
    """``$RETINANET_CACHE/synthetic/v<VERSION>-<train>+<val>-<size>px-seed<seed>`` (cache default ``~/.cache/retinanet``).

    Args:
        options: ``make_synthetic`` keyword arguments (defaults: ``DEFAULTS``).
    """
    o = {**DEFAULTS, **options}
    base = os.environ.get("RETINANET_CACHE") or Path.home() / ".cache" / "retinanet"
    return Path(base) / "synthetic" / f"v{VERSION}-{o['num_train']}+{o['num_val']}-{o['image_size']}px-seed{o['seed']}"


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(angle + math.pi / 4 + k * math.pi / 2, r) for k in range(4)]
    elif kind == "triangle":
        pts = [(angle - math.pi / 2 + k * 2 * math.pi / 3, r) for k in range(3)]
    else:  # star: 5 points, inner radius 0.45 r
        pts = [(angle - math.pi / 2 + k * math.pi / 5, r if k % 2 == 0 else 0.45 * r) for k in range(10)]
    return [(cx + rad * math.cos(a), cy + rad * math.sin(a)) for a, rad in pts]


def _shape_mask(kind: str, size: int | tuple[int, int], cx: float, cy: float, r: float, angle: float) -> Image.Image:
    """An ``L`` mask (255 inside the shape) on a canvas of side ``size`` (or ``(width, height)``)."""
    mask = Image.new("L", (size, size) if isinstance(size, int) else size, 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour field + stripes or blotches + pixel noise, ``uint8 [size, size, 3]``."""
    low = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
    stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    field += rng.uniform(5, 30) * stripes[..., None]
    field += rng.normal(0, rng.uniform(4, 16), size=field.shape)
    return field.clip(0, 255).astype(np.uint8)


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def render_image(rng: np.random.Generator, size: int, max_objects: int = 6) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    """Draw one image.

    Returns:
        (RGB image ``size x size``, [(class name, (x1, y1, x2, y2) continuous pixel box)]).
    """
    img = Image.fromarray(_background(rng, size))
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    lo, hi = max(6, size * 14 // 256), max(12, size * 128 // 256)  # object extent in pixels
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(10):
            kind = CLASSES[int(rng.integers(len(CLASSES)))]
            extent = rng.uniform(lo, hi)  # at 256 px: 14..128, about 1 in 6 smaller than 32 px
            r = extent / 2
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            mask = _shape_mask(kind, size, cx, cy, r, rng.uniform(0, 2 * math.pi))
            box = mask.getbbox()  # (left, top, right + 1, bottom + 1): our continuous convention
            if box is None or min(box[2] - box[0], box[3] - box[1]) < 4:
                continue
            if all(_iou(box, b) < 0.4 for _, b in objects):
                colour = COLOURS[int(rng.integers(len(COLOURS)))]
                shade = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
                img.paste(Image.new("RGB", (size, size), shade), (0, 0), mask)
                objects.append((kind, box))
                break
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    return img, objects


def render_large_image(rng: np.random.Generator, size: int, object_size: tuple[float, float], objects: int,
                       ) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    """Draw one big image crowded with small objects (``render_image``'s shapes and colours).

    Args:
        size: side of the square image, pixels.
        object_size: (smallest, largest) extent of a shape, pixels.
        objects: shapes to place; one that finds no spot overlapping every placed box with IoU < 0.4
            in 10 tries is left out (so crowding never hides an object).
    Returns:
        (RGB image, [(class name, (x1, y1, x2, y2) continuous pixel box)]).
    """
    img = Image.fromarray(_background(rng, size))
    lo, hi = object_size
    placed: list[tuple[str, tuple[int, int, int, int]]] = []
    cells: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}  # boxes by grid cell of side `hi`
    cell = max(1, int(math.ceil(hi)))
    for _ in range(objects):
        for _try in range(10):
            kind = CLASSES[int(rng.integers(len(CLASSES)))]
            r = rng.uniform(lo, hi) / 2
            cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
            x0, y0 = max(0, int(cx - r) - 1), max(0, int(cy - r) - 1)  # the shape's own patch
            x1, y1 = min(size, int(math.ceil(cx + r)) + 2), min(size, int(math.ceil(cy + r)) + 2)
            mask = _shape_mask(kind, (x1 - x0, y1 - y0), cx - x0, cy - y0, r, rng.uniform(0, 2 * math.pi))
            local = mask.getbbox()
            if local is None or min(local[2] - local[0], local[3] - local[1]) < 4:
                continue
            box = (local[0] + x0, local[1] + y0, local[2] + x0, local[3] + y0)
            gx, gy = box[0] // cell, box[1] // cell
            near = [b for dx in (-1, 0, 1) for dy in (-1, 0, 1) for b in cells.get((gx + dx, gy + dy), ())]
            if all(_iou(box, b) < 0.4 for b in near):
                colour = COLOURS[int(rng.integers(len(COLOURS)))]
                shade = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
                img.paste(Image.new("RGB", mask.size, shade), (x0, y0), mask)
                placed.append((kind, box))
                cells.setdefault((gx, gy), []).append(box)
                break
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    return img, placed


def voc_xml(filename: str, size: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    """VOC XML for one image (1-based inclusive coordinates: xmin = x1 + 1, xmax = x2)."""
    objs = "".join(
        f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
        f"    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{x1 + 1}</xmin>\n      <ymin>{y1 + 1}</ymin>\n"
        f"      <xmax>{x2}</xmax>\n      <ymax>{y2}</ymax>\n    </bndbox>\n  </object>\n"
        for name, (x1, y1, x2, y2) in objects
    )
    return (
        f"<annotation>\n  <folder>VOC2012</folder>\n  <filename>{filename}</filename>\n"
        f"  <size>\n    <width>{size}</width>\n    <height>{size}</height>\n    <depth>3</depth>\n  </size>\n"
        f"  <segmented>0</segmented>\n{objs}</annotation>\n"
    )


def make_synthetic(
    out: str | Path, *, num_train: int = 400, num_val: int = 100, image_size: int = 256, seed: int = 0,
    object_size: tuple[float, float] | None = None, objects: int | None = None,
) -> dict[str, int]:
    """Write the synthetic dataset as ``out/VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Main}``.

    Also writes ``out/classes.json`` (the class map) and ``ImageSets/Main/{train,val,trainval}.txt``.
    The same arguments give the same bytes.

    Args:
        out: output folder (created).
        num_train, num_val: number of images per split.
        image_size: side of the square images, pixels (objects span 14/256 .. 128/256 of it).
        seed: RNG seed.
        object_size, objects: the large-image variant (``render_large_image``): ``objects`` shapes
            per image of (min, max) extent in pixels, whatever ``image_size``. Give both or neither.

    Returns:
        summary: {"train": images, "val": images, "objects": objects, "classes": K}.
    """
    if (object_size is None) != (objects is None):
        raise ValueError("make_synthetic: give object_size and objects together (the large-image variant) or neither")
    if object_size is not None and not (4 <= object_size[0] <= object_size[1] <= image_size):
        raise ValueError(f"make_synthetic: object sizes {object_size} must satisfy 4 <= min <= max <= image size {image_size}")
    out = Path(out)
    voc = out / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = {"train": [f"train_{i:05d}" for i in range(num_train)], "val": [f"val_{i:05d}" for i in range(num_val)]}
    n_obj = 0
    for stem in ids["train"] + ids["val"]:
        if object_size is None:
            img, drawn = render_image(rng, image_size)
        else:
            img, drawn = render_large_image(rng, image_size, object_size, objects)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        (voc / "JPEGImages" / f"{stem}.jpg").write_bytes(buf.getvalue())
        (voc / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", image_size, drawn), encoding="utf-8")
        n_obj += len(drawn)
    for split, names in (*ids.items(), ("trainval", ids["train"] + ids["val"])):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    ClassMap.discover(CLASSES).save(out / "classes.json")
    summary = {"train": num_train, "val": num_val, "objects": n_obj, "classes": len(CLASSES)}
    (out / _DONE).write_text(json.dumps({"seed": seed, "image_size": image_size, **summary}) + "\n", encoding="utf-8")
    return summary


def ensure_synthetic(root: str | Path | None = None, **options) -> Path:
    """Write the synthetic dataset into ``root`` (default ``default_synthetic_root()``) unless it is there.

    Args:
        options: ``make_synthetic`` keyword arguments (defaults: ``DEFAULTS``).

    Returns:
        the root folder.
    """
    in_cache = root is None
    root = Path(root) if root is not None else default_synthetic_root(**options)
    if (root / _DONE).is_file():
        return root
    # Written beside, then renamed: concurrent processes (DDP ranks) never read a half-written set.
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    except OSError as err:
        raise RetinaNetError(unwritable_cache(root.parent, err, in_cache)) from None
    try:
        make_synthetic(tmp, **{**DEFAULTS, **options})
        if root.exists() and not (root / _DONE).is_file():
            shutil.rmtree(root)  # an interrupted earlier attempt
        os.rename(tmp, root)
    except OSError as err:
        if not (root / _DONE).is_file():  # not another process's win: a real failure
            raise RetinaNetError(unwritable_cache(root.parent, err, in_cache)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def unwritable_cache(folder: Path, err: OSError, in_cache: bool) -> str:
    """The one-line message for a synthetic dataset that cannot be written into ``folder`` (a
    read-only home, as under ``docker --user`` or on some clusters); ``in_cache``: ``folder`` is in
    the cache, which ``RETINANET_CACHE`` moves."""
    message = f"{folder}: cannot write the synthetic dataset there ({err.strerror or err})"
    if in_cache:
        message += "; set RETINANET_CACHE to a writable folder (the cache, by default ~/.cache/retinanet)"
    return message
