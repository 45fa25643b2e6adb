"""YOLO (ultralytics) datasets, read as exported: ``data.yaml`` + ``images/`` + ``labels/*.txt``.

``data.yaml`` (keys read, which split is read): ``retinanet.data.yolo_yaml``.

Labels: an image ``.../images/x/a.jpg`` has its labels in ``.../labels/x/a.txt`` (the last
``images`` folder of the path becomes ``labels``, the suffix ``.txt``; without an ``images`` folder
the ``.txt`` sits next to the image). No label file, or an empty one: an image with no objects.
One object per line, ``class cx cy w h`` normalised to 0..1 by the image's width and height; a
line of ``class x1 y1 x2 y2 ... xn yn`` (3 or more points: a segmentation export) is the box
around the polygon, as ultralytics reads segments for detection. Boxes become absolute ``xyxy``
pixels of the image as displayed (its EXIF rotation applied, the frame labelling tools use),
read from the file header without decoding the pixels.

Class ids: YOLO class ``i`` (the i-th name) is our id ``i + 1`` (id 0 is never a class); with a
class map file (``--classes``, or the checkpoint's map when evaluating), the name's id in it.

Problems (``DataError``, or left out with ``skip_bad``): a bad line, named ``file:line`` (a field
count that is neither 5 nor an odd number >= 7, a field that is not a finite number, a class id
not in ``names``, a coordinate outside 0..1 by more than ``TOLERANCE``, a negative width or
height), a label file whose image is not in the split's folder, a listed image that does not
exist, an image whose header cannot be read. An image with a bad line is left out whole with
``skip_bad``: leaving out only the line would turn that object into background.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from retinanet.data.classes import ClassMap
from retinanet.data.images import IMAGE_SUFFIXES, ImageReading, is_image_file, not_read, oriented_size
from retinanet.data.paths import repair_warnings, windows_hint, written_path
from retinanet.data.progress import ReadProgress, Tick, no_progress
from retinanet.data.records import Record, clip_boxes, not_finite, repeated_objects
from retinanet.data.yolo_yaml import YoloSpec, absolute_path, find_data_yaml, read_data_yaml

TOLERANCE = 0.01  # normalised coordinates may overshoot 0..1 by this much (rounding in exports), as ultralytics allows


def label_path(image: Path) -> Path:
    """The label file of an image: the last ``images`` folder of its path becomes ``labels``, suffix ``.txt``.

    String work, one ``Path`` made: called for every image of a split."""
    folder, name = os.path.split(os.fspath(image))
    marked = os.sep + folder + os.sep  # every folder name between separators, the first and last too
    at = marked.rfind(_IMAGES_FOLDER)
    if at >= 0:
        folder = (marked[:at] + _LABELS_FOLDER + marked[at + len(_IMAGES_FOLDER):])[1:-1]
    return Path(os.path.join(folder, os.path.splitext(name)[0] + ".txt"))


_IMAGES_FOLDER, _LABELS_FOLDER = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"


def _is_image(p: Path) -> bool:
    return is_image_file(p)


def files_under(folder: Path) -> list[str]:
    """The files under ``folder`` (recursively), as ``rglob("*")`` + ``is_file()`` finds them
    (symlinked files kept, symlinked folders not entered), as path strings in no set order: one
    ``scandir`` per folder, no ``stat`` or ``Path`` per file (a split may hold 100k images)."""
    out, todo = [], [os.fspath(folder)]
    while todo:
        try:
            with os.scandir(todo.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
                    elif e.is_file():
                        out.append(e.path)
        except OSError:  # unreadable or vanished folder: as rglob, nothing from it
            continue
    return out


def list_images(sources: list[Path], problems: list[str], warnings: list[str] | None = None,
                hints: dict[Path, str] | None = None) -> list[Path]:
    """The images of one split, sorted, each once.

    A folder gives the images under it (recursively); a ``.txt`` list its lines (relative paths
    relative to the list's folder; a line written on Windows read by ``paths.written_path``, said
    once per list). A missing source (with its ``hints`` clause: ``YoloSpec.hints``) or listed image goes to ``problems``; an
    image named more than once (twice in a list, or by two sources) is read once, with a warning
    naming where (it would otherwise be trained or evaluated twice).
    """
    found: list[Path] = []
    where: dict[Path, list[str]] = {}
    for src in sources:
        if src.is_dir():
            files = files_under(src)
            images = [Path(f) for f in files if is_image_file(f)]
            found += images
            if not images:
                txt = sum(f.lower().endswith(".txt") for f in files)
                problems.append(f"{src}: no image files in this folder" + (
                    f" (it holds {txt} .txt file(s): a labels folder? the split names the images folder, "
                    "e.g. images/train)" if txt else ""))
            if warnings is not None:  # .txt files are labels when no images/ folder separates them
                warnings += not_read([Path(f) for f in files if not is_image_file(f) and not f.lower().endswith(".txt")], src)
            for p in images:
                where.setdefault(p, []).append(str(src))
        elif src.is_file():
            try:
                lines = src.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not a path
            except (OSError, UnicodeDecodeError) as err:
                problems.append(f"{src}: unreadable image list ({err})")
                continue
            repairs = []
            for n, line in enumerate(lines, 1):
                line = line.strip()
                if not line:
                    continue
                p, how = written_path(os.path.expanduser(line), src.parent)
                p = absolute_path(p)
                repairs.append((line, p, how))
                if not p.is_file():
                    problems.append(f"{src}:{n}: image {line} not found ({p}){windows_hint(line, src.parent)}")
                elif not _is_image(p):
                    problems.append(f"{src}:{n}: {line} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
                else:
                    found.append(p)
                    where.setdefault(p, []).append(f"{src}:{n}")
            if warnings is not None:
                warnings += repair_warnings(str(src), "line(s)", repairs)
        else:
            problems.append(f"{src}: image folder or list not found{(hints or {}).get(src, '')}")
    repeated = {p: at for p, at in where.items() if len(at) > 1}
    if repeated and warnings is not None:
        shown = "; ".join(f"{p} ({', '.join(at)})" for p, at in sorted(repeated.items())[:5])
        warnings.append(f"{len(repeated)} image(s) named more than once, each read once: {shown}{' ...' if len(repeated) > 5 else ''}")
    return sorted(set(found))


def shared_labels(images: list[Path], labels: list[Path] | None = None) -> tuple[list[Path], list[str]]:
    """(the images whose label file no other image of the split has, a problem for each file that
    several images would read: ``a.jpg`` and ``a.png`` both take ``a.txt``, and which one its boxes
    belong to cannot be known). ``labels``: each image's ``label_path``, when already known."""
    labels = labels if labels is not None else [label_path(p) for p in images]
    by_label: dict[Path, list[Path]] = {}
    for p, lab in zip(images, labels):
        by_label.setdefault(lab, []).append(p)
    shared = {lab: ps for lab, ps in by_label.items() if len(ps) > 1}
    problems = [f"{lab}: the label file of {len(ps)} images ({', '.join(p.name for p in ps)}), which cannot be told apart; "
                "give each image its own name" for lab, ps in shared.items()]
    return [p for p, lab in zip(images, labels) if lab not in shared], problems


def orphan_labels(sources: list[Path], images: list[Path], labels: list[Path] | None = None) -> list[str]:
    """Problems for the label files of the split's folders whose image is not there (LabelImg's
    ``classes.txt`` at the top of the labels folder is not a label file). ``labels``: each image's
    ``label_path``, when already known."""
    labels_of = list(labels if labels is not None else map(label_path, images))
    expected = {os.fspath(lab) for lab in labels_of}
    by_case: dict[str, Path] | None = None  # lower-cased label path -> its image: made only when one is missing
    problems = []
    for src in sources:
        if not src.is_dir():
            continue  # a list names its images; other label files are simply not in the split
        labels = label_path(src / "x.jpg").parent
        if labels == src:
            continue  # images and labels in one folder: every .txt is checked through its image
        found = [f for f in files_under(labels) if f.endswith(".txt")] if labels.is_dir() else []
        lonely = sorted(Path(f) for f in found if f not in expected)  # strings compared: no Path per label file
        for txt in lonely:
            if txt != labels / "classes.txt":  # LabelImg's class list, not labels
                if by_case is None:
                    by_case = {os.fspath(lab).lower(): p for lab, p in zip(labels_of, images)}
                twin = by_case.get(os.fspath(txt).lower())
                case = (f"; its image {twin.name} differs in letter case only (names are case-sensitive here, unlike "
                        "on Windows and macOS): rename one to match" if twin is not None else "")
                problems.append(f"{txt}: label file without its image (no {txt.stem}.* image in {src}{case})")
    return problems


def names_ids(names: list[str | None]) -> str:
    """The YOLO ids ``names`` has, for a problem: ``3 classes`` (ids 0..2), or the ids themselves
    where an ``{id: name}`` map leaves gaps (``ids 0, 2``: not "3 classes" for two names)."""
    ids = [i for i, n in enumerate(names) if n is not None]
    if len(ids) == len(names):
        return f"{len(names)} classes"
    return f"ids {', '.join(map(str, ids[:10]))}{' ...' if len(ids) > 10 else ''}"


def parse_label_lines(text: str, source: Path, names: list[str | None], keypoints: int = 0
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Parse one label file's text.

    Args:
        text: the file's content.
        source: the file, named in problems as ``source:line``.
        names: the class names by YOLO id (``None``: an id missing from an ``{id: name}`` map).
        keypoints: values after the box on each line (pose datasets; 0 = box or polygon lines).

    Returns:
        (classes ``[N]`` int64 YOLO ids, boxes ``[N, 4]`` float64 normalised ``xyxy`` (corners may lie
        outside 0..1: a box centred near an edge), line numbers ``[N]`` int64 (1-based),
        problems: one ``source:line: ...`` per bad line).
    """
    classes, boxes, line_nos, problems = [], [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{source}:{n}"
        count = len(fields)
        if keypoints and count != 5 + keypoints:
            problems.append(f"{where}: {count} fields; a pose line has 5 + {keypoints} (kpt_shape) fields")
            continue
        if not keypoints and count != 5 and (count < 7 or count % 2 == 0):
            problems.append(f"{where}: {count} fields; a box line has 5 (class cx cy w h), a polygon line class + 3 or more x y pairs")
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            problems.append(f"{where}: not a number in {line.strip()!r}")
            continue
        if not all(map(math.isfinite, values)):  # plain floats: numpy per line costs more than the rest
            problems.append(f"{where}: {not_finite(values)} in {line.strip()!r}")
            continue
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < len(names) or names[int(cls)] is None:
            problems.append(f"{where}: class id {fields[0]} is not in 'names' ({names_ids(names)})")
            continue
        is_box = bool(keypoints) or count == 5
        coords = values[1:5] if is_box else values[1:]
        if min(coords) < -TOLERANCE or max(coords) > 1 + TOLERANCE:
            shown = " ".join(fields[1:5] if is_box else fields[1:])
            problems.append(f"{where}: coordinates {shown} are not normalised to 0..1")
            continue
        if is_box:
            cx, cy, w, h = coords
            if w < 0 or h < 0:
                problems.append(f"{where}: negative width or height ({fields[3]} {fields[4]})")
                continue
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:  # polygon points x1 y1 x2 y2 ...
            xs, ys = coords[0::2], coords[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        classes.append(int(cls))
        boxes.append(box)
        line_nos.append(n)
    return (np.asarray(classes, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(line_nos, np.int64), problems)


def yolo_class_map(spec: YoloSpec) -> ClassMap:
    """YOLO id ``i`` -> our id ``i + 1``, named as in ``names``."""
    return ClassMap({n: i + 1 for i, n in enumerate(spec.names) if n is not None}, source=str(spec.yaml))


def drop_duplicate_rows(classes: np.ndarray, norm: np.ndarray, line_nos: np.ndarray, ids: np.ndarray, label: Path,
                        warnings: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keep the first of label rows with the same class and box (a box listed twice would be two
    objects: one of them an unmatchable false negative in evaluation), with one warning per file
    naming the dropped lines. Arrays as ``parse_label_lines`` returns them, plus our ``ids``."""
    repeated = repeated_objects(classes, norm)  # [N] bool
    if not repeated.any():
        return classes, norm, line_nos, ids
    first, dropped = np.flatnonzero(~repeated), np.flatnonzero(repeated)
    lines = ", ".join(map(str, line_nos[dropped].tolist()))
    warnings.append(f"{label}: dropped {len(dropped)} duplicate label line(s) (line(s) {lines}: same class and box "
                    "as an earlier line)")
    return classes[first], norm[first], line_nos[first], ids[first]


def read_label(label: Path) -> str | None:
    """A label file's text (a byte-order mark is not a class), None when there is no such file:
    one open, no ``is_file`` first (called for every image). Other ``OSError``s and undecodable
    text raise."""
    try:
        return label.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def to_record(image: Path, image_id: int, spec: YoloSpec, id_table: np.ndarray, class_map: ClassMap,
              problems: list[str], warnings: list[str], reading: ImageReading = ImageReading(),
              label: Path | None = None) -> Record | None:
    """One image and its label file as a ``Record`` (None, with ``problems``, when bad).

    Args:
        id_table: ``[len(names)]`` int64, our class id of each YOLO id (0: not in ``class_map``).
        reading: the EXIF rule and pixel limit the image's size is read under (``oriented_size``).
        label: the image's ``label_path``, when already known.
    """
    label = label if label is not None else label_path(image)
    try:
        hw = oriented_size(image, exif=reading.exif, max_pixels=reading.max_pixels)
        text = read_label(label)
    except (OSError, UnidentifiedImageError, UnicodeDecodeError, ValueError) as err:
        problems.append(f"{image}: cannot read the image header or its label file {label} ({type(err).__name__}: {err})")
        return None
    classes, norm, line_nos, bad = parse_label_lines(text or "", label, spec.names, spec.keypoints)
    ids = id_table[classes]  # [N] our class ids
    bad += [f"{label}:{n}: class {c} ({spec.names[c]!r}) is not in the class map ({class_map.source})"
            for n, c in zip(line_nos[ids == 0].tolist(), classes[ids == 0].tolist())]
    if bad:
        problems += bad
        return None
    classes, norm, line_nos, ids = drop_duplicate_rows(classes, norm, line_nos, ids, label, warnings)
    h, w = hw
    boxes = (norm * np.array([w, h, w, h], np.float64)).astype(np.float32)  # [N, 4] absolute xyxy
    clipped, keep = clip_boxes(boxes, hw)
    outside = ((norm < -TOLERANCE) | (norm > 1 + TOLERANCE)).any(axis=1) & keep
    if outside.any():
        lines = ", ".join(map(str, line_nos[outside].tolist()))
        warnings.append(f"{label}: {int(outside.sum())} box(es) extend outside the {w}x{h} image (line(s) {lines}); clipped")
    if not keep.all():
        lines = ", ".join(map(str, line_nos[~keep].tolist()))
        warnings.append(f"{label}: dropped {int((~keep).sum())} box(es) with no area (line(s) {lines})")
    source = str(label if text is not None else image)
    return Record(str(image), clipped[keep], ids[keep], np.zeros(int(keep.sum()), bool), image_id, hw, source)


def split_records(spec: YoloSpec, key: str, class_map: ClassMap, problems: list[str], warnings: list[str],
                  reading: ImageReading = ImageReading(), progress: Tick = no_progress) -> list[Record]:
    """The ``Record`` of every image of the split ``key`` of ``spec``; problems and warnings appended.
    ``progress(done, total)`` is called after each image."""
    if key not in spec.splits:
        problems.append(f"{spec.yaml}: no '{key}:' entry (splits: {', '.join(spec.splits) or 'none'})")
        return []
    sources = spec.splits[key]
    images = list_images(sources, problems, warnings, spec.hints)
    labels = [label_path(p) for p in images]  # once per image: every step below needs them
    problems += orphan_labels(sources, images, labels)
    kept, shared = shared_labels(images, labels)
    problems += shared
    if len(kept) < len(images):
        kept_set = set(kept)
        labels = [lab for p, lab in zip(images, labels) if p in kept_set]
    images = kept
    if images and not any(lab.is_file() for lab in labels):
        warnings.append(f"{key}: none of the {len(images)} images has a label file (looked for {labels[0]}, ...)")
    id_table = np.asarray([(class_map.id_of(n) or 0) if n is not None else 0 for n in spec.names], np.int64)
    out = []
    for i, (p, lab) in enumerate(zip(images, labels)):
        out.append(to_record(p, i, spec, id_table, class_map, problems, warnings, reading, lab))
        progress(i + 1, len(images))
    return [r for r in out if r is not None]


def yolo_records(root: Path, keys: dict[str, str], class_map: ClassMap | None, problems: list[str], warnings: list[str],
                 reading: ImageReading = ImageReading(), progress: ReadProgress = no_progress,
                 ) -> tuple[dict[str, list[Record]], ClassMap]:
    """Read the splits of a YOLO dataset.

    Args:
        root: the ``data.yaml`` (or a folder holding it).
        keys: our split name -> the yaml key read for it (e.g. ``{"train": "train", "val": "val"}``).
        class_map: map class names to these ids; None = ``names`` order (YOLO id i -> id i + 1).
        reading: the EXIF rule and pixel limit image sizes are read under.
        progress: called as ``progress(split, done, total)`` after each image (``retinanet.data.progress``).

    Returns:
        ({split: [Record]}, the class map used). Problems and warnings are appended.

    Raises:
        DataError: the yaml itself cannot be used.
    """
    spec = read_data_yaml(find_data_yaml(root))
    warnings += spec.notes
    class_map = class_map or yolo_class_map(spec)
    return {s: split_records(spec, k, class_map, problems, warnings, reading, functools.partial(progress, s))
            for s, k in keys.items()}, class_map
