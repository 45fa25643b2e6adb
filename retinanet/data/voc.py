"""Pascal VOC annotations: XML parsing and record building.

Pixel convention: VOC's 1-based inclusive ``xmin..xmax`` become continuous ``x1 = xmin - 1,
x2 = xmax`` (a box over pixel columns 0..9 is ``x1=0, x2=10``); float coordinates are accepted.

Where the XML and image files are (standard and flat layouts): ``retinanet.data.voc_layout``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as ET
import numpy as np

from retinanet.data.classes import ClassMap
from retinanet.data.images import IMAGE_SUFFIXES, is_image_file
from retinanet.data.paths import base_name
from retinanet.data.records import Record, clip_boxes, no_area_reason, not_finite, repeated_objects


@dataclass
class VocAnnotation:
    """One parsed XML file (original pixel frame, not yet checked against a class map)."""

    filename: str | None
    size: tuple[int, int] | None  # (height, width) from <size>, None when absent or zero
    names: list[str] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # [N, 4] xyxy
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # [N]
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # [N]
    size_note: str | None = None  # why a <size> present was not usable

    def __getitem__(self, key: str):  # dict-style access: ann["boxes"]
        return getattr(self, key)


def _number(el: Element | None, tag: str, path: Path, where: str = "") -> float:
    """The finite number in ``el``'s child ``tag``; ValueError naming ``path``, ``where`` (the
    object) and the tag otherwise (``records.not_finite``: inf and nan are refused)."""
    node = el.find(tag) if el is not None else None
    if node is None or node.text is None or not node.text.strip():
        raise ValueError(f"{path}: {where}<{tag}> missing")
    try:
        value = float(node.text.strip())
    except ValueError:
        raise ValueError(f"{path}: {where}<{tag}> is {node.text.strip()!r}, not a number") from None
    fault = not_finite(value)
    if fault:
        raise ValueError(f"{path}: {where}<{tag}> is {node.text.strip()!r}: {fault}")
    return value


def _flag(obj: Element, tag: str) -> bool:
    node = obj.find(tag)
    text = (node.text or "").strip().lower() if node is not None else ""
    return text in ("1", "true", "yes")


def encoding_hint(path: Path) -> str:
    """Why an XML may not parse, when its bytes say it: not UTF-8 and no ``encoding=`` declared
    (a Windows tool's Latin-1 or cp1252 names), else ""."""
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError:
        if b"encoding=" not in data[:200]:
            return ("; the file is not UTF-8 and declares no encoding: save it as UTF-8, or start it with "
                    "<?xml version=\"1.0\" encoding=\"windows-1252\"?> (or the encoding it has)")
    except OSError:
        pass
    return ""


def parse_voc_xml(path: str | Path) -> VocAnnotation:
    """Parse one VOC XML file (entity expansion disabled, via defusedxml).

    Only each ``<object>``'s own ``<bndbox>`` counts: the ``<part>`` boxes inside VOC2012 person
    objects are never objects. A missing ``<difficult>`` means 0.

    Returns:
        ``VocAnnotation`` with ``boxes`` ``[N, 4]`` float32 xyxy (continuous, not clipped).

    Raises:
        ValueError: malformed XML or a box without numeric coordinates; the message names ``path``.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: malformed XML ({err}){encoding_hint(path)}") from None
    except Exception as err:  # defusedxml refuses entities, DTDs, ...
        raise ValueError(f"{path}: unreadable XML ({type(err).__name__}: {err})") from None
    if root.tag.startswith("{"):  # a default namespace (xmlns="..."): the VOC element names are what count
        for el in root.iter():
            if isinstance(el.tag, str):
                el.tag = el.tag.split("}", 1)[-1]
    if root.tag != "annotation":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size, size_note = None, None
    size_el = root.find("size")
    if size_el is not None:
        try:
            h, w = int(_number(size_el, "height", path)), int(_number(size_el, "width", path))
            size = (h, w) if h > 0 and w > 0 else None
        except ValueError as err:
            size_note = f"{str(err).removeprefix(f'{path}: ')}; the decoded image's size is used"
    names, boxes, difficult, truncated = [], [], [], []
    for k, obj in enumerate(root.findall("object"), 1):  # direct children only: <part> boxes are not objects
        name_el = obj.find("name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        if not name:
            raise ValueError(f"{path}: object {k} has no <name> (or an empty one)")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{path}: object {name!r} has no <bndbox>")
        where = f"object {k} ({name}): "
        xmin, ymin = _number(bb, "xmin", path, where), _number(bb, "ymin", path, where)
        xmax, ymax = _number(bb, "xmax", path, where), _number(bb, "ymax", path, where)
        names.append(name)
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        difficult.append(_flag(obj, "difficult"))
        truncated.append(_flag(obj, "truncated"))
    fn = root.find("filename")
    return VocAnnotation(
        filename=(fn.text or "").strip() or None if fn is not None else None,
        size=size,
        names=names,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        difficult=np.asarray(difficult, bool),
        truncated=np.asarray(truncated, bool),
        size_note=size_note,
    )


def voc_box_fault(box: np.ndarray, size: tuple[int, int] | None) -> str:
    """Why a box ``[4]`` (continuous xyxy, ``x1 = xmin - 1``) has no area, in the XML's own terms."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if np.isfinite(box).all() and x2 <= x1:
        return f"xmin {x1 + 1:g} > xmax {x2:g}"
    if np.isfinite(box).all() and y2 <= y1:
        return f"ymin {y1 + 1:g} > ymax {y2:g}"
    return no_area_reason(box, size)


@dataclass(frozen=True)
class ImageSlot:
    """Where an annotation's image is: the files of ``folder`` named ``stem`` + any suffix."""

    folder: Path
    stem: str
    files: tuple[Path, ...] = ()


def _stem(name: str) -> str:
    """``Path(name).stem`` of a file name, without making a ``Path``."""
    return os.path.splitext(name)[0]


def stem_index(folder: Path) -> dict[str, list[Path]]:
    """Stem -> the files of ``folder`` with that stem (sorted; one listing of the folder)."""
    out: dict[str, list[Path]] = {}
    if folder.is_dir():
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file():  # no stat for a plain file; stems by strings (a folder may hold 100k images)
                out.setdefault(_stem(entry.name), []).append(Path(entry.path))
    return out


def pick_image(slot: ImageSlot, ann: VocAnnotation, xml: Path, problems: list[str], warnings: list[str]) -> Path | None:
    """The image of an annotation among the files named like it (``a.jpg``, ``a.png``, ...).

    The XML's ``<path>`` is not read (a labeller's own disk: ``C:\\Users\\...``), and ``<filename>``
    only by its base name, whichever separator it was written with (``paths.base_name``).

    One image: that one. Several: the one the XML's ``<filename>`` names, with a warning saying
    which was used; when it names none of them, a problem naming them all (which one is meant
    cannot be known). None: a problem (the file the annotation names, or ``stem.*``).
    """
    images = [p for p in slot.files if is_image_file(p)]
    if len(images) == 1:
        return images[0]
    named = base_name(ann.filename) if ann.filename else None  # "images\\a.jpg" (Windows) names a.jpg too
    if len(images) > 1:
        chosen = [p for p in images if p.name == named] or [p for p in images if named and p.name.lower() == named.lower()]
        names = ", ".join(p.name for p in images)
        if len(chosen) == 1:
            warnings.append(f"{xml}: {len(images)} images in {slot.folder} are named {slot.stem}.* ({names}): "
                            f"{chosen[0].name} used, the one its <filename> names")
            return chosen[0]
        problems.append(f"{xml}: {len(images)} images in {slot.folder} are named {slot.stem}.* ({names}) and its <filename> "
                        f"{ann.filename!r} names none of them: which one it annotates cannot be known (remove or rename the others)")
        return None
    others = [p for p in slot.files if p != xml and p.suffix.lower() != ".xml"]
    if others:  # a file is there, of a type no reader reads: named as such, not as "missing"
        problems.append(f"{', '.join(map(str, others))}: not one of the image types read ({' '.join(IMAGE_SUFFIXES)}); "
                        f"annotation {xml} has no image (convert it to one of them)")
        return None
    shown = slot.folder / (named if named and Path(named).stem == slot.stem else f"{slot.stem}.*")
    problems.append(f"{shown}: image file missing (annotation {xml}; no file named {slot.stem}.* in {slot.folder})")
    return None


def to_record(
    ann: VocAnnotation, slot: ImageSlot, xml: Path, image_id: int, class_map: ClassMap, problems: list[str], warnings: list[str]
) -> Record | None:
    """Turn an annotation into a ``Record``: its image (``pick_image``), class ids, boxes clipped
    to the stated size.

    Problems (unknown class, missing or ambiguous image) go to ``problems`` and give None; boxes
    with no area after clipping are dropped with a message in ``warnings``.
    """
    image = pick_image(slot, ann, xml, problems, warnings)
    if image is None:
        return None
    unknown = sorted({n for n in ann.names if n not in class_map})
    if unknown:
        problems.append(f"{xml}: class(es) not in the class map ({class_map.source}): {', '.join(unknown)}")
        return None
    if ann.size_note:
        warnings.append(f"{xml}: {ann.size_note}")
    boxes = ann.boxes
    keep = np.ones(len(boxes), bool)
    if ann.size is not None:
        boxes, keep = clip_boxes(boxes, ann.size)
        outside = keep & (boxes != ann.boxes).any(axis=1)
        if outside.any():
            which = [f"object {i + 1} ({ann.names[i]})" for i in np.flatnonzero(outside)]
            warnings.append(f"{xml}: {len(which)} box(es) extend outside the {ann.size[1]}x{ann.size[0]} image; clipped: "
                            + ", ".join(which[:5]) + (f" and {len(which) - 5} more" if len(which) > 5 else ""))
    else:
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not keep.all():
        bad = [f"object {i + 1} ({ann.names[i]}): {voc_box_fault(ann.boxes[i], ann.size)}" for i in np.flatnonzero(~keep)]
        warnings.append(f"{xml}: dropped {len(bad)} box(es) with no area: {'; '.join(bad)}")
    labels = np.asarray([class_map.id_of(n) for n in ann.names], np.int64).reshape(-1)
    repeated = repeated_objects(labels, ann.boxes, ann.difficult)
    if repeated.any():
        said = [f"object {i + 1} ({ann.names[i]})" for i in np.flatnonzero(repeated)]
        warnings.append(f"{xml}: dropped {len(said)} repeated object(s): {', '.join(said)} (same class, box and difficult "
                        "flag as an earlier object)")
        keep &= ~repeated
    return Record(str(image), boxes[keep], labels[keep], ann.difficult[keep], image_id, ann.size, str(xml))
