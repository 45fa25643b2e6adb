"""Helpers that write tiny VOC datasets for the data tests."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def xml_text(filename: str, size: tuple[int, int] | None, objects: list[dict], extra: str = "") -> str:
    """VOC XML; ``objects``: dicts with name, box (xmin, ymin, xmax, ymax as written), optional
    difficult (None = no tag), truncated, parts [(name, box)]."""
    out = [f"<annotation><folder>x</folder><filename>{filename}</filename>"]
    if size is not None:
        out.append(f"<size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>")
    for o in objects:
        out.append(f"<object><name>{o['name']}</name>")
        if o.get("truncated") is not None:
            out.append(f"<truncated>{o['truncated']}</truncated>")
        if o.get("difficult") is not None:
            out.append(f"<difficult>{o['difficult']}</difficult>")
        x1, y1, x2, y2 = o["box"]
        out.append(f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>")
        for pname, (a, b, c, d) in o.get("parts", []):
            out.append(f"<part><name>{pname}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></part>")
        out.append("</object>")
    out.append(extra + "</annotation>")
    return "".join(out)


def write_image(path: Path, hw: tuple[int, int] = (64, 80), seed: int = 0, colour: tuple[int, int, int] | None = None) -> Path:
    """A noisy RGB image (or a flat colour) of size ``hw``."""
    rng = np.random.default_rng(seed)
    arr = np.empty((*hw, 3), np.uint8)
    arr[:] = colour if colour is not None else rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_voc(root: Path, items: dict[str, list[tuple[str, list[dict]]]], year: str = "VOC2012", hw=(64, 80)) -> Path:
    """Standard layout ``root/VOCdevkit/<year>``; ``items``: split -> [(stem, objects)]."""
    voc = root / "VOCdevkit" / year
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (voc / "Annotations").mkdir(exist_ok=True)
    for split, entries in items.items():
        for i, (stem, objects) in enumerate(entries):
            write_image(voc / "JPEGImages" / f"{stem}.jpg", hw, seed=zlib.crc32(stem.encode()))  # not hash(): per process
            (voc / "Annotations" / f"{stem}.xml").write_text(xml_text(f"{stem}.jpg", hw, objects))
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s + "\n" for s, _ in entries))
    return voc


def obj(name: str = "cat", box=(5, 6, 30, 40), **kw) -> dict:
    return {"name": name, "box": box, **kw}
