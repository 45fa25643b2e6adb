"""COCO JSON (``instances_*.json``) annotations.

How ``--data`` names COCO: the training annotation file, e.g. ``--data
coco/annotations/instances_train2017.json``. The validation file is ``--val-split`` when it ends in
``.json`` (a path), else the training file's name with the train split replaced by the val split
(``instances_train2017.json`` -> ``instances_val2017.json`` for ``--train-split train --val-split
val``). Images of ``instances_<split>.json`` are looked for, in order, in ``<root>/<split>`` where
``<root>`` is the folder above ``annotations/`` (the official layout: ``coco/train2017``), in the
JSON's folder (``file_name`` relative to it), and in ``<json folder>/images``; the first folder
holding the first image wins.

Boxes ``[x, y, w, h]`` become xyxy; category ids are the class ids as they are (the 91-output
COCO head indexes them); names come from ``categories``. ``iscrowd`` objects are ignore regions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from retinanet.data.classes import ClassMap
from retinanet.data.records import Record, clip_boxes
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
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError([f"{path}: COCO annotation file not found"]) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError([f"{path}: not a readable COCO JSON ({err})"]) from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if not isinstance(data, dict) or missing:
        raise DataError([f"{path}: not a COCO instances file (missing list(s): {', '.join(missing)})"])
    return data


def coco_class_map(data: dict, path: Path) -> ClassMap:
    """Category ids and names from ``categories``."""
    return ClassMap({c["name"]: int(c["id"]) for c in data["categories"]}, source=str(path))


def image_folder(path: Path, data: dict) -> Path:
    """Folder that ``file_name`` is relative to (see the module docstring)."""
    split = path.stem.split("_", 1)[-1]
    parent = path.parent.parent if path.parent.name == "annotations" else path.parent
    candidates = [parent / split, path.parent, path.parent / "images", parent / "images" / split]
    first = data["images"][0]["file_name"] if data["images"] else None
    for c in candidates:
        if first is None or (c / first).is_file():
            return c
    return candidates[0]


def coco_records(path: Path, data: dict, class_map: ClassMap, problems: list[str], warnings: list[str]) -> list[Record]:
    """One ``Record`` per image of a COCO file (images without annotations included).

    Missing images, annotations of unknown images or categories and malformed boxes go to
    ``problems``; boxes with no area after clipping are dropped with a warning.
    """
    folder = image_folder(path, data)
    known = set(class_map.ids)
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    image_ids = {im.get("id") for im in data["images"]}
    for iid in sorted(set(by_image) - image_ids, key=str):
        problems.append(f"{path}: {len(by_image[iid])} annotation(s) refer to image id {iid!r}, which is not in 'images'")
    records = []
    for im in data["images"]:
        where = f"{path}#image {im.get('id')}"
        try:
            iid, file, h, w = int(im["id"]), folder / im["file_name"], int(im["height"]), int(im["width"])
        except (KeyError, TypeError, ValueError) as err:
            problems.append(f"{where}: image entry lacks id/file_name/height/width ({err})")
            continue
        if not file.is_file():
            problems.append(f"{file}: image file missing ({where})")
            continue
        anns = by_image.get(iid, [])
        bad = [a for a in anns if a.get("category_id") not in known]
        if bad:
            problems.append(f"{where}: category id(s) not in the class map: {sorted({a.get('category_id') for a in bad}, key=str)}")
            continue
        try:
            xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        except (KeyError, ValueError, TypeError) as err:
            problems.append(f"{where}: malformed 'bbox' ({err})")
            continue
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes, keep = clip_boxes(boxes, (h, w))
        if not keep.all():
            warnings.append(f"{where} ({file.name}): dropped {int((~keep).sum())} box(es) with no area inside the image")
        labels = np.asarray([a["category_id"] for a in anns], np.int64).reshape(-1)
        crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool).reshape(-1)
        records.append(Record(str(file), boxes[keep], labels[keep], crowd[keep], iid, (h, w), where))
    return records
