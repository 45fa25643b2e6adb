"""COCO JSON (``instances_*.json``) annotations.

How ``--data`` names COCO: the training annotation file, e.g. ``--data
coco/annotations/instances_train2017.json``. The validation file is ``--val-split`` when it ends in
``.json`` (a path), else the training file's name with the train split replaced by the val split
(``instances_train2017.json`` -> ``instances_val2017.json`` for ``--train-split train --val-split
val``). Images of ``instances_<split>.json`` are looked for, in order, in ``<root>/<split>`` where
``<root>`` is the folder above ``annotations/`` (the official layout: ``coco/train2017``), in the
JSON's folder (``file_name`` relative to it), and in ``<json folder>/images``; the folder holding
most of a sample of the images wins (one missing file does not send the reader elsewhere).
A ``file_name`` written on Windows (``images\\train\\a.jpg``, ``C:\\Users\\me\\data\\a.jpg``) is read
by ``retinanet.data.paths.written_path``: backslashes as separators, an absolute Windows path by its
trailing parts under that folder; one warning per file says so.

Boxes ``[x, y, w, h]`` become xyxy. Without a class map of its own (``--classes``, a checkpoint's)
the category ids are the class ids as they are (the 91-output COCO head indexes them; a file that
uses id 0, the background here, gets its ids + 1) and names come from ``categories``; with one, each category is found in it by name, and ids that differ are
said aloud. ``iscrowd`` objects are ignore regions.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from retinanet.data.classes import ClassMap
from retinanet.data.images import IMAGE_SUFFIXES, is_image_file
from retinanet.data.paths import is_windows_form, repair_warnings, windows_hint, written_path
from retinanet.data.progress import Tick, no_progress
from retinanet.data.records import Record, clip_boxes, no_area_reason, not_finite, repeated_objects
from retinanet.errors import DataError


def val_json_path(train_json: Path, train_split: str, val_split: str) -> Path:
    """The validation annotation file (see the module docstring)."""
    if val_split.endswith(".json"):
        return Path(val_split)
    name = train_json.name
    split_word = re.sub(r"\d+$", "", train_split) or train_split
    if train_split in name:
        return train_json.with_name(name.replace(train_split, val_split, 1))
    if split_word in name:
        return train_json.with_name(name.replace(split_word, val_split, 1))
    return train_json.with_name(f"instances_{val_split}.json")


def read_coco_json(path: Path) -> dict:
    """Load and shape-check a COCO annotation file. Raises ``DataError`` naming ``path``."""
    if Path(path).is_dir():
        raise DataError([f"{path}: a folder, not a COCO annotation file (the format is coco: --format coco, or a "
                         "recipe's data.format as --config coco sets it); give the instances_*.json file as --data, "
                         "or --format for the folder's layout"])
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))  # a byte-order mark (Windows editors) is not content
    except FileNotFoundError:
        raise DataError([f"{path}: COCO annotation file not found"]) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError([f"{path}: not a readable COCO JSON ({err})"]) from None
    if not isinstance(data, dict):
        raise DataError([f"{path}: not a COCO instances file (the top level is {_kind(data)}; expected an object "
                         "with 'images', 'annotations' and 'categories' lists)"])
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DataError([f"{path}: not a COCO instances file (missing list(s): {', '.join(missing)})"])
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def _entry(kind: str, i: int, entry: dict | None) -> str:
    """``categories[3] (id 5)``: how messages name an entry of a list."""
    eid = entry.get("id") if isinstance(entry, dict) else None
    return f"{kind}[{i}]" + (f" (id {eid!r})" if eid is not None else "")


def _repeated(ids: list) -> dict:
    """id -> positions, for the ids that occur more than once (``None`` left out)."""
    at: dict = {}
    for i, v in enumerate(ids):
        if v is not None:
            at.setdefault(v, []).append(i)
    return {v: pos for v, pos in at.items() if len(pos) > 1}


def valid_categories(data: dict, path: Path, problems: list[str]) -> dict[int, str]:
    """Category id -> name of the well-formed ``categories`` entries.

    An entry that is not an object, lacks an integer ``id`` or a non-empty ``name``, or repeats an
    id or a name, goes to ``problems`` (naming its index, id and ``path``) and is left out (both
    entries of a repeat: which one is meant cannot be known).
    """
    ok: list[tuple[int, int, str]] = []
    for i, c in enumerate(data["categories"]):
        where = f"{path}: {_entry('categories', i, c)}"
        if not isinstance(c, dict):
            problems.append(f"{where} is {_kind(c)}, not an object")
        elif not _is_int(c.get("id")):
            problems.append(f"{where}: 'id' is missing or not an integer")
        elif not isinstance(c.get("name"), str) or not c["name"].strip():
            problems.append(f"{where}: 'name' is missing or not a non-empty string")
        else:
            ok.append((i, c["id"], c["name"]))
    bad = set()
    for key, word in ((1, "id"), (2, "name")):
        for value, pos in _repeated([e[key] for e in ok]).items():
            problems.append(f"{path}: category {word} {value!r} is repeated (categories[{', '.join(str(ok[p][0]) for p in pos)}])")
            bad.update(ok[p][1] for p in pos)
    return {cid: name for _, cid, name in ok if cid not in bad}


def used_ids(data: dict) -> set:
    """The ``category_id`` values the annotations use."""
    return {a.get("category_id") for a in data["annotations"] if isinstance(a, dict)}


def coco_class_map(data: dict, path: Path) -> ClassMap:
    """Category ids and names from ``categories`` (malformed entries left out, and a category of id
    0 no annotation uses: Roboflow names the dataset so; ``coco_records`` reports both). A file
    whose annotations use id 0 (Label Studio and labelme2coco count from 0; 0 is the background
    here) gets its ids + 1, and ``coco_records`` reads it by name and says so. Raises ``DataError``
    when no category is usable."""
    problems: list[str] = []
    cats = {cid: name for cid, name in valid_categories(data, path, problems).items() if cid != 0 or 0 in used_ids(data)}
    if not cats:
        raise DataError(problems or [f"{path}: 'categories' is empty"], summary=f"{path}: no usable category")
    if 0 in cats:
        return ClassMap({name: cid + 1 for cid, name in cats.items()}, source=f"{path} (category ids + 1: id 0 is the "
                        "background here)")
    return ClassMap({name: cid for cid, name in cats.items()}, source=str(path))


def coco_box_fault(xywh: np.ndarray, hw: tuple[int, int]) -> str:
    """Why a COCO ``[x, y, w, h]`` box ``[4]`` has no area, in the JSON's own terms."""
    x, y, w, h = (float(v) for v in xywh)
    if np.isfinite(xywh).all() and w <= 0:
        return "zero width" if w == 0 else f"negative width {w:g}"
    if np.isfinite(xywh).all() and h <= 0:
        return "zero height" if h == 0 else f"negative height {h:g}"
    return no_area_reason(np.asarray([x, y, x + w, y + h]), hw)


def image_folders(path: Path) -> list[Path]:
    """The folders ``file_name`` may be relative to, in order (see the module docstring)."""
    split = path.stem.split("_", 1)[-1]
    parent = path.parent.parent if path.parent.name == "annotations" else path.parent
    return list(dict.fromkeys([parent / split, path.parent, path.parent / "images", parent / "images" / split]))


def image_folder(path: Path, data: dict, sample: int = 20) -> tuple[Path, bool]:
    """(the folder that ``file_name`` is relative to, whether any image was found there).

    The candidate (``image_folders``) holding most of ``sample`` file names spread over the list
    wins, the earlier one on a tie; none holding any: the first, and False.
    """
    candidates = image_folders(path)
    names = [im["file_name"] for im in data["images"] if isinstance(im, dict) and isinstance(im.get("file_name"), str)
             and im["file_name"]]
    if not names:
        return candidates[0], True
    picked = names[:: max(1, len(names) // sample)][:sample]
    found = [sum(written_path(n, c)[0].is_file() for n in picked) for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (found[i], -i))
    return candidates[best], found[best] > 0


def category_ids(path: Path, cats: dict[int, str], class_map: ClassMap, warnings: list[str]) -> dict[int, int]:
    """File category id -> class id, by name (``cats``: the file's id -> name). A category the class
    map lacks is left out (its annotations are reported). Ids that change are said in ``warnings``."""
    to_class = {cid: class_map.id_of(name) for cid, name in cats.items()}
    to_class = {cid: k for cid, k in to_class.items() if k is not None}
    moved = [f"{cats[cid]!r} {cid} -> {k}" for cid, k in to_class.items() if cid != k]
    if moved:
        warnings.append(f"{path}: category ids differ from those of the class map ({class_map.source}), so objects are "
                        f"read by category name: {', '.join(moved[:10])}{' ...' if len(moved) > 10 else ''}")
    return to_class


def _valid_images(path: Path, data: dict, problems: list[str]) -> tuple[dict[int, dict], set]:
    """(image id -> entry of the well-formed, unrepeated ``images`` entries, every id declared).

    A repeated id is a problem and all its entries are left out: the annotations cannot be told apart.
    So is a ``file_name`` under several ids (one image's objects split between entries).
    """
    ok: list[tuple[int, dict]] = []
    for i, im in enumerate(data["images"]):
        where = f"{path}: {_entry('images', i, im)}"
        if not isinstance(im, dict):
            problems.append(f"{where} is {_kind(im)}, not an object")
        elif not _is_int(im.get("id")):
            problems.append(f"{where}: 'id' is missing or not an integer")
        elif not isinstance(im.get("file_name"), str) or not im["file_name"]:
            problems.append(f"{where}: 'file_name' is missing or not a string")
        elif not all(_is_int(im.get(k)) and im[k] > 0 for k in ("height", "width")):
            problems.append(f"{where}: 'height' and 'width' must be positive integers (got {im.get('height')!r}, {im.get('width')!r})")
        else:
            ok.append((i, im))
    declared = {im.get("id") for im in data["images"] if isinstance(im, dict)}
    repeated = _repeated([im["id"] for _, im in ok])
    for iid, pos in repeated.items():
        files = ", ".join(f"images[{ok[p][0]}] {ok[p][1]['file_name']}" for p in pos)
        problems.append(f"{path}: image id {iid} is repeated ({files}); each image needs its own id")
    ok = [(i, im) for i, im in ok if im["id"] not in repeated]
    same_file = _repeated([im["file_name"] for _, im in ok])
    for name, pos in same_file.items():
        entries = ", ".join(f"images[{ok[p][0]}] id {ok[p][1]['id']}" for p in pos)
        problems.append(f"{path}: file_name {name!r} is listed under several image ids ({entries}): its objects are "
                        "split between them, and each would train with the others' objects as background; "
                        "give each image one entry")
    return {im["id"]: im for _, im in ok if im["file_name"] not in same_file}, declared


def _valid_annotations(path: Path, data: dict, problems: list[str]) -> tuple[dict[int, list[dict]], set[int]]:
    """(image id -> its well-formed annotations, ids of images with a bad or repeated annotation).

    Checked: an object with integer ``id``, ``image_id``, ``category_id`` and a ``bbox`` of four
    finite numbers (``records.not_finite``: ``Infinity`` and ``NaN`` refused); annotation ids unique. Each problem names the entry's index, id, image and ``path``.
    """
    by_image: dict[int, list[dict]] = {}
    bad_images: set[int] = set()
    for j, ann in enumerate(data["annotations"]):
        where = f"{path}: {_entry('annotations', j, ann)}"
        if not isinstance(ann, dict):
            problems.append(f"{where} is {_kind(ann)}, not an object")
            continue
        iid = ann.get("image_id")
        if not _is_int(iid):
            problems.append(f"{where}: 'image_id' is missing or not an integer")
            continue
        where += f" of image {iid}"
        bbox = ann.get("bbox")
        fault = ("'id' is missing or not an integer" if not _is_int(ann.get("id"))
                 else "'category_id' is missing or not an integer" if not _is_int(ann.get("category_id"))
                 else "no 'bbox'" if bbox is None
                 else None if isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
                 else f"'bbox' is {bbox!r}, not [x, y, width, height] numbers")
        fault = fault or (f"'bbox' {bbox!r}: {not_finite(bbox)}" if not_finite(bbox) else None)
        if fault:
            problems.append(f"{where}: {fault}")
            bad_images.add(iid)
            continue
        by_image.setdefault(iid, []).append(ann)
    anns = [a for group in by_image.values() for a in group]
    for aid, pos in _repeated([a["id"] for a in anns]).items():
        images = sorted({anns[p]["image_id"] for p in pos})
        problems.append(f"{path}: annotation id {aid} is repeated ({len(pos)} times, image(s) {images})")
        bad_images.update(images)
    return by_image, bad_images


def _same_file(path: Path, images: dict[int, dict], files: dict[int, tuple[Path | None, str]]) -> list[str]:
    """Problems for the images whose different ``file_name`` values were read as one file by
    ``written_path`` (``a.jpg`` and ``C:\\data\\a.jpg``, found by its base name): its objects would
    be split between the entries. Those entries' files become None in ``files`` (left out, as a
    repeated ``file_name`` is)."""
    by_file: dict[str, list[int]] = {}
    for iid, (file, _) in files.items():
        by_file.setdefault(os.path.normpath(file), []).append(iid)
    problems = []
    for file, iids in by_file.items():
        if len(iids) > 1 and any(files[i][1] for i in iids):  # a repair made the names meet (the file exists)
            names = ", ".join(f"id {i} '{images[i]['file_name']}'" for i in iids)
            problems.append(f"{path}: {len(iids)} images name the same file {file} ({names}): its objects would be split "
                            "between them; give each image one entry")
            files.update({i: (None, "") for i in iids})
    return problems


def coco_records(path: Path, data: dict, class_map: ClassMap, problems: list[str], warnings: list[str],
                 progress: Tick = no_progress) -> list[Record]:
    """One ``Record`` per image of a COCO file (images without annotations included).

    Problems (each naming the entry and ``path``; with ``skip_bad`` the images concerned are left
    out): malformed or repeated categories, images or annotations (see ``valid_categories``,
    ``_valid_images``, ``_valid_annotations``), annotations of unknown images or categories,
    missing image files. Boxes with no area after clipping are dropped with a warning saying why.
    ``progress(done, total)`` is called as the image entries are read.
    """
    cats = valid_categories(data, path, problems)  # malformed ones reported here; the class map left them out
    if 0 in cats and 0 not in used_ids(data):
        warnings.append(f"{path}: category {cats.pop(0)!r} has id 0 and no annotation uses it: left out (Roboflow "
                        "exports name the dataset so; id 0 is the background)")
    to_class = category_ids(path, cats, class_map, warnings)
    images, declared = _valid_images(path, data, problems)
    by_image, bad_images = _valid_annotations(path, data, problems)
    for iid in sorted(set(by_image) - declared):
        ids = [a["id"] for a in by_image[iid]]
        problems.append(f"{path}: annotation(s) {ids[:10]}{' ...' if len(ids) > 10 else ''} refer to image id {iid}, which is not in 'images'")
    folder, found = image_folder(path, data)
    if not found:
        windows = next((im["file_name"] for im in images.values() if is_windows_form(im["file_name"])), None)
        problems.append(f"{path}: none of its images was found; looked for the file_name values in "
                        f"{', '.join(str(c) for c in image_folders(path))}"
                        + (f" (they are Windows paths such as '{windows}': also read with '\\' as folder separators, "
                           "and an absolute one by its trailing folder and file names)" if windows else ""))
    files = {iid: written_path(im["file_name"], folder) for iid, im in images.items()}
    warnings += repair_warnings(str(path), "file_name value(s)", [(images[i]["file_name"], *files[i]) for i in files])
    problems += _same_file(path, images, files)
    records = []
    for done, (iid, im) in enumerate(images.items(), 1):
        progress(done - 1, len(images))  # before: the loop leaves by `continue`
        where = f"{path}#image {iid}"
        (file, _), h, w = files[iid], im["height"], im["width"]
        if file is None:
            continue  # one file under several entries: said by _same_file
        anns = by_image.get(iid, [])
        unknown = sorted({a["category_id"] for a in anns if a["category_id"] not in to_class})
        if unknown:
            what = [f"{cats[c]!r} (id {c})" if c in cats else f"id {c} (not in 'categories')" for c in unknown]
            problems.append(f"{where}: annotation(s) {[a['id'] for a in anns if a['category_id'] in unknown]} have "
                            f"categories not in the class map ({class_map.source}): {', '.join(what)}")
            continue
        if iid in bad_images:
            continue  # its problem is already reported
        if not is_image_file(file):  # the types every reader reads (data/images.IMAGE_SUFFIXES)
            problems.append(f"{file}: not one of the image types read ({' '.join(IMAGE_SUFFIXES)}) ({where})")
            continue
        if not file.is_file():
            problems.append(f"{file}: image file missing ({where}){windows_hint(im['file_name'], folder)}")
            continue
        xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        clipped, keep = clip_boxes(boxes, (h, w))  # finite: _valid_annotations refused the rest
        # clipped silently by up to 1 px (float rounding of x + w, common in exported files); more is said
        moved = np.flatnonzero(keep & (np.abs(clipped - boxes) > 1).any(axis=1))
        if len(moved):
            warnings.append(f"{where} ({file.name}): {len(moved)} box(es) extend over 1 px outside the {w}x{h} image; clipped: "
                            + "; ".join(f"annotation {anns[i]['id']} {anns[i]['bbox']}" for i in moved[:5])
                            + (" ..." if len(moved) > 5 else ""))
        boxes = clipped
        if not keep.all():
            bad = [f"annotation {anns[i]['id']} {anns[i]['bbox']}: {coco_box_fault(xywh[i], (h, w))}" for i in np.flatnonzero(~keep)]
            warnings.append(f"{where} ({file.name}): dropped {len(bad)} box(es) with no area: {'; '.join(bad)}")
        labels = np.asarray([to_class[a["category_id"]] for a in anns], np.int64).reshape(-1)
        crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool).reshape(-1)
        repeated = repeated_objects(labels, xywh, crowd)
        if repeated.any():
            ids = [anns[i]["id"] for i in np.flatnonzero(repeated)]
            warnings.append(f"{where} ({file.name}): dropped {len(ids)} repeated annotation(s) {ids} (same category, bbox "
                            "and iscrowd as an earlier annotation of the image)")
            keep &= ~repeated
        # the stated area decides COCO's size ranges in pycocotools (the mask's, on COCO); absent: the box's
        areas = np.asarray([a["area"] if isinstance(a.get("area"), (int, float)) and not isinstance(a.get("area"), bool)
                            and math.isfinite(a["area"]) and a["area"] > 0 else float(a["bbox"][2]) * float(a["bbox"][3])
                            for a in anns], np.float64).reshape(-1)
        records.append(Record(str(file), boxes[keep], labels[keep], crowd[keep], iid, (h, w), where, areas[keep]))
    progress(len(images), len(images))
    return records
