"""Pascal VOC annotations: XML parsing and the two folder layouts.

Pixel convention: VOC's 1-based inclusive ``xmin..xmax`` become continuous ``x1 = xmin - 1,
x2 = xmax`` (a box over pixel columns 0..9 is ``x1=0, x2=10``); float coordinates are accepted.

Standard layout: ``ROOT/VOCdevkit/VOC2007|VOC2012/{Annotations,JPEGImages,ImageSets/Main/<split>.txt}``;
ROOT may also be the VOCdevkit folder or one ``VOC20xx`` folder.

Flat layout (LabelImg, CVAT, Roboflow exports): images and XML files in one folder, or in two
folders (``images/`` + ``annotations/``, ``JPEGImages`` + ``Annotations``, ...), matched by stem,
no split files. The validation images are those named in a list file (``--val-split
path/to/val.txt``), else a seeded draw of ``val_fraction`` of the stems, written to
``ROOT/splits/{train,val}.txt`` and reused when those files exist (delete them to redraw).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as ET
import numpy as np

from retinanet.data.classes import ClassMap
from retinanet.data.images import IMAGE_SUFFIXES, is_image_file, not_read
from retinanet.data.records import Record, clip_boxes, no_area_reason, not_finite, repeated_objects
from retinanet.errors import DataError

_XML_DIRS = ("Annotations", "annotations", "labels", "xml", "Labels")
_IMAGE_DIRS = ("JPEGImages", "images", "Images", "imgs", "img")


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
        raise ValueError(f"{path}: malformed XML ({err})") from None
    except Exception as err:  # defusedxml refuses entities, DTDs, ...
        raise ValueError(f"{path}: unreadable XML ({type(err).__name__}: {err})") from None
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
            raise ValueError(f"{path}: an <object> has no <name>")
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


def stem_index(folder: Path) -> dict[str, list[Path]]:
    """Stem -> the files of ``folder`` with that stem (sorted; one listing of the folder)."""
    out: dict[str, list[Path]] = {}
    if folder.is_dir():
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file():
                out.setdefault(Path(entry.name).stem, []).append(Path(entry.path))
    return out


def pick_image(slot: ImageSlot, ann: VocAnnotation, xml: Path, problems: list[str], warnings: list[str]) -> Path | None:
    """The image of an annotation among the files named like it (``a.jpg``, ``a.png``, ...).

    One image: that one. Several: the one the XML's ``<filename>`` names, with a warning saying
    which was used; when it names none of them, a problem naming them all (which one is meant
    cannot be known). None: a problem (the file the annotation names, or ``stem.*``).
    """
    images = [p for p in slot.files if is_image_file(p)]
    if len(images) == 1:
        return images[0]
    named = Path(ann.filename).name if ann.filename else None
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
            warnings.append(f"{xml}: {int(outside.sum())} box(es) extend outside the {ann.size[1]}x{ann.size[0]} image; clipped")
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


# --- standard layout -------------------------------------------------------------------------------


def find_voc_years(root: Path, years: tuple[str, ...] = ()) -> list[Path]:
    """The ``VOC20xx`` folders under ``root`` (ROOT, ROOT/VOCdevkit, or a VOC20xx folder itself).

    Args:
        years: e.g. ``("2007", "2012")`` or ``("VOC2007",)``; empty = every one found.
    """
    root = Path(root)
    if (root / "Annotations").is_dir() and (root / "ImageSets").is_dir():
        return [root]
    base = root / "VOCdevkit" if (root / "VOCdevkit").is_dir() else root
    found = sorted(p for p in base.glob("VOC*") if p.is_dir() and (p / "Annotations").is_dir())
    if years:
        wanted = {y if y.startswith("VOC") else f"VOC{y}" for y in years}
        missing = sorted(wanted - {p.name for p in found})
        if missing:
            raise DataError([f"{base}: no {m} folder with Annotations/ (found: {', '.join(p.name for p in found) or 'none'})" for m in missing])
        found = [p for p in found if p.name in wanted]
    return found


def is_voc_standard(root: Path) -> bool:
    """Whether ``root`` looks like a VOC standard layout (VOCdevkit, VOC20xx or one year folder)."""
    try:
        return bool(find_voc_years(root))
    except DataError:
        return False


def read_list_file(f: Path, warnings: list[str]) -> list[str]:
    """The first word of each non-blank line of a list file (split file, validation list), each
    once: a word listed again is read once, with a warning naming its lines (it would otherwise be
    trained or evaluated twice)."""
    lines: dict[str, list[int]] = {}
    for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            lines.setdefault(line.split()[0], []).append(n)
    repeated = {w: ns for w, ns in lines.items() if len(ns) > 1}
    if repeated:
        shown = "; ".join(f"{w} (lines {', '.join(map(str, ns))})" for w, ns in list(repeated.items())[:5])
        warnings.append(f"{f}: {len(repeated)} name(s) listed more than once, each read once: {shown}{' ...' if len(repeated) > 5 else ''}")
    return list(lines)


def read_split_ids(year_dirs: list[Path], split: str, warnings: list[str] | None = None) -> tuple[list[tuple[Path, str]], list[str]]:
    """``(year_dir, image id)`` pairs listed in ``ImageSets/Main/<split>.txt`` of each year.

    A year without that file is skipped (VOC2012 has no test.txt, so "07+12" trainval/test works);
    no file at all, or an empty file, is a problem; an id listed twice is read once, with a warning.

    Returns:
        (pairs, problems)
    """
    pairs, problems, looked = [], [], []
    for ydir in year_dirs:
        f = ydir / "ImageSets" / "Main" / f"{split}.txt"
        looked.append(str(f))
        if not f.is_file():
            continue
        ids = read_list_file(f, warnings if warnings is not None else [])
        if not ids:
            problems.append(f"{f}: split file is empty")
        pairs += [(ydir, i) for i in ids]
    if not pairs and not problems:
        problems.append(f"split {split!r}: no split file found (looked for {', '.join(looked)})")
    return pairs, problems


def parse_all(pairs: list[tuple[Path, ImageSlot]], problems: list[str]) -> list[tuple[VocAnnotation, Path, ImageSlot]]:
    """Parse every ``(xml, image slot)`` pair; unreadable XML goes to ``problems``."""
    out = []
    for xml, image in pairs:
        if not xml.is_file():
            problems.append(f"{xml}: annotation file missing")
            continue
        try:
            out.append((parse_voc_xml(xml), xml, image))
        except (ValueError, OSError) as err:
            problems.append(str(err))
    return out


def voc_standard_pairs(root: Path, years: tuple[str, ...], split: str, problems: list[str],
                       warnings: list[str] | None = None) -> list[tuple[Path, ImageSlot]]:
    """``(xml, image slot)`` of each id of one split of a standard-layout dataset."""
    year_dirs = find_voc_years(root, years)
    ids, split_problems = read_split_ids(year_dirs, split, warnings)
    problems += split_problems
    index = {y: stem_index(y / "JPEGImages") for y in year_dirs}
    return [(y / "Annotations" / f"{i}.xml", ImageSlot(y / "JPEGImages", i, tuple(index[y].get(i, ())))) for y, i in ids]


# --- flat layout -----------------------------------------------------------------------------------


def flat_folders(root: Path) -> tuple[Path, Path]:
    """``(image folder, XML folder)`` of a flat export: known sub-folder names, else ROOT itself."""
    root = Path(root)
    xml_dir = next((root / d for d in _XML_DIRS if (root / d).is_dir()), root)
    img_dir = next((root / d for d in _IMAGE_DIRS if (root / d).is_dir()), root)
    return img_dir, xml_dir


def _read_list(f: Path, warnings: list[str]) -> list[str]:
    """Stems named by a list file (stems or file names), each once (``read_list_file``)."""
    return list(dict.fromkeys(Path(w).stem for w in read_list_file(f, warnings)))


def flat_split(
    root: Path, val_fraction: float, seed: int, *, val_list: Path | None = None, split_dir: Path | None = None
) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """Train/val split of a flat export's stems: a list file, saved split files, or a seeded draw.

    Args:
        root: the export folder.
        val_fraction: share of stems held out for validation (0..1), when drawing.
        seed: seed of the draw.
        val_list: a text file naming the validation images (stems or file names, one a line);
            every other annotated image is training.
        split_dir: where ``train.txt``/``val.txt`` are read from if both exist, else written
            (default ``root/splits``).

    Returns:
        ({"train": stems, "val": stems}, problems, warnings)
    """
    split_dir = Path(split_dir or Path(root) / "splits")
    _, xml_dir = flat_folders(root)
    stems = sorted(p.stem for p in xml_dir.glob("*.xml"))
    if not stems:
        return {"train": [], "val": []}, [f"{xml_dir}: no .xml annotation files found"], []
    files = {s: split_dir / f"{s}.txt" for s in ("train", "val")}
    if val_list is not None:
        if not val_list.is_file():
            return {"train": [], "val": []}, [f"{val_list}: validation list file not found"], []
        warns: list[str] = []
        val = set(_read_list(val_list, warns))
        problems = [f"{val_list}: validation list is empty"] if not val else []
        unknown = sorted(val - set(stems))
        problems += [f"{val_list}: lists {len(unknown)} image(s) with no XML in {xml_dir}: {', '.join(unknown[:5])}"] if unknown else []
        return {"train": [s for s in stems if s not in val], "val": sorted(val & set(stems))}, problems, warns
    if all(f.is_file() for f in files.values()):
        warns = []
        split = {s: _read_list(f, warns) for s, f in files.items()}
        problems = [f"{files[n]}: split file is empty" for n in split if not split[n] and not (n == "val" and val_fraction == 0)]
        both = sorted(set(split["train"]) & set(split["val"]))
        if both:
            problems.append(f"{files['train']} and {files['val']} both list {len(both)} image(s): {', '.join(both[:5])}"
                            f"{' ...' if len(both) > 5 else ''}; an image is in one split (fix the files, or delete both to redraw)")
        listed = set(split["train"]) | set(split["val"])
        new = [s for s in stems if s not in listed]
        warns += [f"{split_dir}: {len(new)} annotated image(s) in no split file are not used (delete the split files to redraw)"] if new else []
        return split, problems, warns
    order = list(stems)
    random.Random(seed).shuffle(order)
    val = set(order[: int(round(val_fraction * len(order)))])
    split = {"train": [s for s in stems if s not in val], "val": sorted(val)}
    try:
        split_dir.mkdir(parents=True, exist_ok=True)
        for s, f in files.items():
            f.write_text("".join(x + "\n" for x in split[s]), encoding="utf-8")
    except OSError as err:  # read-only dataset: the split is still deterministic, just not saved
        return split, [], [f"{split_dir}: cannot write the split files ({err})"]
    return split, [], []


def voc_flat_pairs(root: Path, stems: list[str]) -> list[tuple[Path, ImageSlot]]:
    """``(xml, image slot)`` for ``stems`` of a flat export (the image is picked by ``pick_image``)."""
    img_dir, xml_dir = flat_folders(root)
    index = stem_index(img_dir)
    return [(xml_dir / f"{s}.xml", ImageSlot(img_dir, s, tuple(index.get(s, ())))) for s in stems]


def unannotated_images(root: Path) -> list[str]:
    """Warnings naming the files of a flat export's image folder that are not read: images that
    have no XML (left out, not negatives), and files of other types (not images, not XML; one
    named like an XML without an image is a problem of ``pick_image`` instead)."""
    img_dir, xml_dir = flat_folders(root)
    stems = {p.stem for p in xml_dir.glob("*.xml")}
    files = [p for p in sorted(img_dir.iterdir()) if p.is_file()]
    lonely = [p.name for p in files if is_image_file(p) and p.stem not in stems]
    image_stems = {p.stem for p in files if is_image_file(p)}
    other = [p for p in files if not is_image_file(p) and p.suffix.lower() != ".xml" and (p.stem not in stems or p.stem in image_stems)]
    warns = not_read(other, img_dir)
    if lonely:
        warns.append(f"{img_dir}: {len(lonely)} image(s) without an XML file are not used: {', '.join(lonely[:5])}{' ...' if len(lonely) > 5 else ''}")
    return warns
