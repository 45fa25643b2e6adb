"""YOLO (ultralytics) datasets, read as exported: ``data.yaml`` + ``images/`` + ``labels/*.txt``.

``data.yaml`` keys read: ``path`` (dataset root; relative to the yaml's folder; absent = that
folder), ``train`` / ``val`` / ``test`` (``validation`` is taken for a missing ``val``), each a
folder of images (searched recursively), a ``.txt`` list of image paths, or a list of those;
``names`` (a list, or an ``{id: name}`` map) or ``nc`` alone (names ``class0``, ``class1``, ...);
``kpt_shape`` (pose datasets: the keypoints after the box are not used). A split entry is resolved
against the root; when that does not exist and it starts with ``../`` (Roboflow writes ``train:
../train/images`` next to a yaml in the dataset folder) the entry without ``../`` is used. Lines
of a ``.txt`` list are image paths, relative ones relative to the list's folder.

Which split is read: ``train_split`` / ``val_split`` name the yaml keys (``--val-split test``
evaluates the ``test:`` images).

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

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import UnidentifiedImageError

from retinanet.data.classes import ClassMap
from retinanet.data.images import IMAGE_SUFFIXES, ImageReading, oriented_size
from retinanet.data.records import Record, clip_boxes
from retinanet.errors import DataError

TOLERANCE = 0.01  # normalised coordinates may overshoot 0..1 by this much (rounding in exports), as ultralytics allows
SPLIT_KEYS = ("train", "val", "test", "minival")  # the yaml keys that name images, as in ultralytics


@dataclass
class YoloSpec:
    """A parsed ``data.yaml``.

    Attributes:
        yaml: the file.
        root: the dataset root its split entries are relative to.
        names: class names, index = YOLO class id (``None`` for ids absent from an ``{id: name}`` map).
        splits: yaml key -> image sources (folders or ``.txt`` lists), resolved.
        keypoints: values per line after the box (pose datasets), 0 otherwise.
    """

    yaml: Path
    root: Path
    names: list[str | None]
    splits: dict[str, list[Path]]
    keypoints: int = 0


def find_data_yaml(root: Path) -> Path:
    """``root`` itself when a file, else ``root/data.yaml`` or the one ``*.yaml``/``*.yml`` in it."""
    if root.is_file():
        return root
    if (root / "data.yaml").is_file():
        return root / "data.yaml"
    found = sorted(p for p in root.glob("*.y*ml") if p.suffix.lower() in (".yaml", ".yml"))
    if len(found) != 1:
        what = f"{len(found)} yaml files ({', '.join(p.name for p in found)})" if found else "no data.yaml"
        raise DataError([f"{root}: {what}; give the YOLO dataset's yaml file as --data"])
    return found[0]


def _names(data: dict, path: Path) -> list[str | None]:
    """Class names indexed by YOLO id, from ``names`` (list or ``{id: name}``) or ``nc``."""
    names, nc = data.get("names"), data.get("nc")
    if names is None:
        if isinstance(nc, int) and not isinstance(nc, bool) and nc > 0:
            return [f"class{i}" for i in range(nc)]
        raise DataError([f"{path}: no 'names:' (a list of class names, or {{id: name}}) and no 'nc:'"])
    if isinstance(names, dict):
        bad = [k for k in names if isinstance(k, bool) or not isinstance(k, int) or k < 0]
        if bad:
            raise DataError([f"{path}: 'names:' keys must be class ids 0, 1, ...; not {', '.join(map(repr, bad))}"])
        table: list[str | None] = [None] * (max(names) + 1 if names else 0)
        for k, v in names.items():
            table[k] = v
        names = table
    if not isinstance(names, list) or not any(n is not None for n in names):
        raise DataError([f"{path}: 'names:' must be a non-empty list of class names or an {{id: name}} map"])
    problems = [f"{path}: class {i} has name {n!r}; names are non-empty strings" for i, n in enumerate(names)
                if n is not None and not (isinstance(n, (str, int)) and str(n).strip())]
    names = [None if n is None else str(n).strip() for n in names]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n is not None and n in seen:
            problems.append(f"{path}: classes {seen[n]} and {i} are both named {n!r}")
        seen.setdefault(n, i)
    count = len([n for n in names if n is not None])
    if isinstance(nc, int) and nc != count:
        problems.append(f"{path}: 'nc: {nc}' but 'names:' has {count} classes")
    if problems:
        raise DataError(problems, summary=f"invalid class names in {path}")
    return names


def _absolute(p: Path) -> Path:
    """``p`` made absolute with ``..`` collapsed, symlinks kept (messages show the paths as written)."""
    return Path(os.path.abspath(p))


def _split_sources(root: Path, value, key: str, path: Path) -> list[Path]:
    """The folders / list files of one split entry (a string or a list of strings)."""
    entries = value if isinstance(value, list) else [value]
    if not entries or not all(isinstance(e, str) and e.strip() for e in entries):
        raise DataError([f"{path}: '{key}:' must be a folder or .txt file path, or a list of them; not {value!r}"])
    out = []
    for e in entries:
        p = _absolute(root / Path(e.strip()).expanduser())
        if not p.exists() and e.strip().startswith("../"):
            p = _absolute(root / e.strip()[3:])  # Roboflow: "../train/images" written for a yaml one level down
        out.append(p)
    return out


def read_data_yaml(path: str | Path) -> YoloSpec:
    """Parse and check a YOLO ``data.yaml`` (see the module docstring).

    Raises:
        DataError: unreadable yaml, no names, malformed entries; the message names ``path``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError([f"{path}: YOLO data yaml not found"]) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DataError([f"{path}: not a readable yaml file ({err})"]) from None
    if not isinstance(data, dict):
        raise DataError([f"{path}: a YOLO data yaml is a mapping with 'train:', 'val:' and 'names:'"])
    if "val" not in data and "validation" in data:
        data["val"] = data["validation"]
    base = _absolute(path.parent)
    root = _absolute(base / Path(str(data["path"])).expanduser()) if data.get("path") else base
    keypoints = 0
    if data.get("kpt_shape") is not None:
        try:
            keypoints = math.prod(int(k) for k in data["kpt_shape"])
        except (TypeError, ValueError):
            raise DataError([f"{path}: 'kpt_shape:' must be a list of integers, not {data['kpt_shape']!r}"]) from None
    splits = {k: _split_sources(root, data[k], k, path) for k in SPLIT_KEYS if data.get(k) is not None}
    return YoloSpec(path, root, _names(data, path), splits, keypoints)


def label_path(image: Path) -> Path:
    """The label file of an image: the last ``images`` folder of its path becomes ``labels``, suffix ``.txt``."""
    parts = list(image.parts)
    folders = [i for i, p in enumerate(parts[:-1]) if p == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    return Path(*parts).with_suffix(".txt")


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def list_images(sources: list[Path], problems: list[str]) -> list[Path]:
    """The images of one split, sorted and without duplicates.

    A folder gives the images under it (recursively); a ``.txt`` list its lines (relative paths
    relative to the list's folder). A missing source or listed image goes to ``problems``.
    """
    found: list[Path] = []
    for src in sources:
        if src.is_dir():
            found += [p for p in src.rglob("*") if _is_image(p) and p.is_file()]
        elif src.is_file():
            try:
                lines = src.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                problems.append(f"{src}: unreadable image list ({err})")
                continue
            for n, line in enumerate(lines, 1):
                line = line.strip()
                if not line:
                    continue
                p = _absolute(src.parent / Path(line).expanduser())
                if not p.is_file():
                    problems.append(f"{src}:{n}: image {line} not found ({p})")
                elif not _is_image(p):
                    problems.append(f"{src}:{n}: {line} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
                else:
                    found.append(p)
        else:
            problems.append(f"{src}: image folder or list not found")
    return sorted(set(found))


def orphan_labels(sources: list[Path], images: list[Path]) -> list[str]:
    """Problems for the label files of the split's folders whose image is not there."""
    expected = {label_path(p) for p in images}
    problems = []
    for src in sources:
        if not src.is_dir():
            continue  # a list names its images; other label files are simply not in the split
        labels = label_path(src / "x.jpg").parent
        if labels == src:
            continue  # images and labels in one folder: every .txt is checked through its image
        for txt in sorted(labels.rglob("*.txt")) if labels.is_dir() else []:
            if txt not in expected:
                problems.append(f"{txt}: label file without its image (no {txt.stem}.* image in {src})")
    return problems


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
        if not all(math.isfinite(v) for v in values):
            problems.append(f"{where}: not a finite number in {line.strip()!r}")
            continue
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < len(names) or names[int(cls)] is None:
            problems.append(f"{where}: class id {fields[0]} is not in 'names' ({len(names)} classes)")
            continue
        is_box = bool(keypoints) or count == 5
        coords = np.asarray(values[1:5] if is_box else values[1:], np.float64)
        if ((coords < -TOLERANCE) | (coords > 1 + TOLERANCE)).any():
            shown = " ".join(fields[1:5] if is_box else fields[1:])
            problems.append(f"{where}: coordinates {shown} are not normalised to 0..1")
            continue
        if is_box:
            cx, cy, w, h = coords
            if w < 0 or h < 0:
                problems.append(f"{where}: negative width or height ({fields[3]} {fields[4]})")
                continue
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:
            xy = coords.reshape(-1, 2)  # [P, 2] polygon points
            box = (*xy.min(0), *xy.max(0))
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
    rows = np.concatenate([classes[:, None].astype(np.float64), norm], axis=1)  # [N, 5]
    first = np.sort(np.unique(rows, axis=0, return_index=True)[1]) if len(rows) else np.zeros(0, np.int64)
    if len(first) == len(rows):
        return classes, norm, line_nos, ids
    dropped = np.setdiff1d(np.arange(len(rows)), first)
    lines = ", ".join(map(str, line_nos[dropped].tolist()))
    warnings.append(f"{label}: dropped {len(dropped)} duplicate label line(s) (line(s) {lines}: same class and box "
                    "as an earlier line)")
    return classes[first], norm[first], line_nos[first], ids[first]


def to_record(image: Path, image_id: int, spec: YoloSpec, id_table: np.ndarray, class_map: ClassMap,
              problems: list[str], warnings: list[str], reading: ImageReading = ImageReading()) -> Record | None:
    """One image and its label file as a ``Record`` (None, with ``problems``, when bad).

    Args:
        id_table: ``[len(names)]`` int64, our class id of each YOLO id (0: not in ``class_map``).
        reading: the EXIF rule and pixel limit the image's size is read under (``oriented_size``).
    """
    label = label_path(image)
    try:
        hw = oriented_size(image, exif=reading.exif, max_pixels=reading.max_pixels)
        text = label.read_text(encoding="utf-8") if label.is_file() else ""
    except (OSError, UnidentifiedImageError, UnicodeDecodeError, ValueError) as err:
        problems.append(f"{image}: cannot read the image header or its label file {label} ({type(err).__name__}: {err})")
        return None
    classes, norm, line_nos, bad = parse_label_lines(text, label, spec.names, spec.keypoints)
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
    source = str(label if label.is_file() else image)
    return Record(str(image), clipped[keep], ids[keep], np.zeros(int(keep.sum()), bool), image_id, hw, source)


def split_records(spec: YoloSpec, key: str, class_map: ClassMap, problems: list[str], warnings: list[str],
                  reading: ImageReading = ImageReading()) -> list[Record]:
    """The ``Record`` of every image of the split ``key`` of ``spec``; problems and warnings appended."""
    if key not in spec.splits:
        problems.append(f"{spec.yaml}: no '{key}:' entry (splits: {', '.join(spec.splits) or 'none'})")
        return []
    sources = spec.splits[key]
    images = list_images(sources, problems)
    problems += orphan_labels(sources, images)
    if images and not any(label_path(p).is_file() for p in images):
        warnings.append(f"{key}: none of the {len(images)} images has a label file (looked for {label_path(images[0])}, ...)")
    id_table = np.asarray([(class_map.id_of(n) or 0) if n is not None else 0 for n in spec.names], np.int64)
    out = [to_record(p, i, spec, id_table, class_map, problems, warnings, reading) for i, p in enumerate(images)]
    return [r for r in out if r is not None]


def yolo_records(root: Path, keys: dict[str, str], class_map: ClassMap | None, problems: list[str], warnings: list[str],
                 reading: ImageReading = ImageReading()) -> tuple[dict[str, list[Record]], ClassMap]:
    """Read the splits of a YOLO dataset.

    Args:
        root: the ``data.yaml`` (or a folder holding it).
        keys: our split name -> the yaml key read for it (e.g. ``{"train": "train", "val": "val"}``).
        class_map: map class names to these ids; None = ``names`` order (YOLO id i -> id i + 1).
        reading: the EXIF rule and pixel limit image sizes are read under.

    Returns:
        ({split: [Record]}, the class map used). Problems and warnings are appended.

    Raises:
        DataError: the yaml itself cannot be used.
    """
    spec = read_data_yaml(find_data_yaml(root))
    class_map = class_map or yolo_class_map(spec)
    return {s: split_records(spec, k, class_map, problems, warnings, reading) for s, k in keys.items()}, class_map
