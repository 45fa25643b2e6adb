"""Run a detector on image files: drawn images, a JSON of all detections, optional VOC XML.

Inputs are files, folders (``recursive`` to descend) or glob patterns. A ``DataLoader`` decodes
and resizes in worker processes; the model runs on batches; each image's detections are mapped
back to its original pixels. A file that cannot be read or written is reported (file and reason)
and skipped; the run goes on.

Outputs under ``out``::

    images/<name>          each image with its detections drawn (unless draw=False)
    xml/<name>.xml         VOC annotation per image (voc_xml=True), 1-based pixels as our reader
    predictions.json       {"images": [{"file", "width", "height", "detections": [{"box",
                           "score", "label", "class"}]}], "failures": [{"file", "error"}]}
"""

from __future__ import annotations

import glob
import json
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from retinanet.data.classes import coco_category_names
from retinanet.data.images import IMAGE_SUFFIXES, open_rgb
from retinanet.engine.draw import draw_detections
from retinanet.errors import RetinaNetError
from retinanet.geometry import resize_image

_KEEP_SUFFIX = (".jpg", ".jpeg", ".png")  # drawn images keep these; other formats get ".png" added


@dataclass(frozen=True)
class PredictOptions:
    """How ``predict`` filters, batches and writes.

    ``score_thresh``: keep detections scoring at least this; ``classes``: class names to keep
    (empty = all); ``max_dets``: per image, highest scores first.
    """

    out: str = "runs/predict"
    score_thresh: float = 0.3
    classes: tuple[str, ...] = ()
    max_dets: int = 100
    batch_size: int = 4
    workers: int = 2
    draw: bool = True
    voc_xml: bool = False
    progress: bool = True


@dataclass
class PredictSummary:
    """Counts and locations of a ``predict`` run; ``failures`` are ``(file, reason)``."""

    num_images: int
    num_detections: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    out: Path = Path(".")
    json_path: Path = Path("predictions.json")

    def text(self) -> str:
        lines = [
            f"{self.num_images} image(s) processed, {self.num_detections} detection(s), {len(self.failures)} failure(s)",
            f"detections: {self.json_path}",
        ]
        if (self.out / "images").is_dir():
            lines.append(f"drawn images: {self.out / 'images'}")
        if (self.out / "xml").is_dir():
            lines.append(f"VOC XML: {self.out / 'xml'}")
        return "\n".join(lines)


def find_images(inputs: list[str], recursive: bool = False) -> list[tuple[Path, str]]:
    """Image files named by ``inputs`` (files, folders, globs), each with a unique output name.

    Folders give their files with an image extension (descending when ``recursive``), named by
    their path inside the folder; a file or glob match is named by its file name. Repeated files
    are listed once; equal names get ``_1``, ``_2``... before the extension.

    Raises:
        RetinaNetError: an input that is neither a file, a folder nor a matching pattern, or no
            image at all.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            found += [(f, f.relative_to(p).as_posix()) for f in files]
        elif p.is_file():
            found.append((p, p.name))
        elif glob.has_magic(item):
            files = sorted(Path(f) for f in glob.glob(item, recursive=recursive) if Path(f).is_file())
            if not files:
                raise RetinaNetError(f"{item}: the pattern matches no file")
            found += [(f, f.name) for f in files]
        else:
            raise RetinaNetError(f"{item}: no such file or folder")
    if not found:
        raise RetinaNetError(f"no images found in {', '.join(inputs)} (extensions: {' '.join(IMAGE_SUFFIXES)}"
                             f"{'' if recursive else '; use --recursive for sub-folders'})")
    seen_files, taken, out = set(), set(), []
    for path, name in found:
        key = path.resolve()
        if key in seen_files:
            continue
        seen_files.add(key)
        stem, suffix = os.path.splitext(name)
        unique, n = name, 0
        while os.path.splitext(unique)[0].lower() in taken:  # also keeps xml/<stem>.xml unique
            n += 1
            unique = f"{stem}_{n}{suffix}"
        taken.add(os.path.splitext(unique)[0].lower())
        out.append((path, unique))
    return out


class ImageFiles(torch.utils.data.Dataset):
    """Decode + resize image files for the model; a failure is returned, not raised.

    Items: ``{"index", "image": uint8 [3, h, w] resized or None, "original": uint8 [3, H0, W0]
    (only with ``keep_original``, for drawing) or None, "orig_size": (H0, W0), "error": None or
    str}``.
    """

    def __init__(self, files: list[Path], min_size: int, max_size: int, keep_original: bool = False):
        self.files, self.min_size, self.max_size = files, min_size, max_size
        self.keep_original = keep_original

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            img = open_rgb(self.files[index])  # as the data pipeline decodes (raises on a corrupt file)
            tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # [3, H0, W0] uint8
            resized = resize_image(tensor, self.min_size, self.max_size)
            original = tensor if self.keep_original else None
            return {"index": index, "image": resized, "original": original, "orig_size": (img.height, img.width), "error": None}
        except Exception as err:  # any decoder error: report the file and go on
            return {"index": index, "image": None, "original": None, "orig_size": (0, 0), "error": f"{type(err).__name__}: {err}"}


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def class_names_of(class_map: dict[str, int] | None, num_classes: int) -> dict[int, str]:
    """Class id -> name: the checkpoint's class map, else COCO names for a 91-output head, else
    "class N" for every id 1..num_classes-1."""
    if class_map:
        return {int(v): str(k) for k, v in class_map.items()}
    if num_classes == 91:
        return coco_category_names()
    return {i: f"class {i}" for i in range(1, num_classes)}


def filter_detections(out: dict[str, torch.Tensor], score_thresh: float, keep_labels: torch.Tensor | None, max_dets: int):
    """Detections of one image above ``score_thresh``, of ``keep_labels`` if given, the
    ``max_dets`` best: ``(boxes [K, 4], scores [K], labels [K])`` CPU tensors, by score.
    Label 0 is never a class (the background output of torchvision-layout heads): dropped."""
    boxes, scores, labels = out["boxes"].float().cpu(), out["scores"].float().cpu(), out["labels"].cpu()
    keep = (scores >= score_thresh) & (labels != 0)
    if keep_labels is not None:
        keep &= torch.isin(labels, keep_labels)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = torch.argsort(scores, descending=True, stable=True)[:max_dets]
    return boxes[order], scores[order], labels[order]


def voc_xml(path: Path, size: tuple[int, int], boxes: np.ndarray, names: list[str]) -> str:
    """VOC annotation XML for one image; boxes ``[K, 4]`` continuous xyxy in original pixels.

    Coordinates follow our reader's convention (``x1 = xmin - 1, x2 = xmax``): ``xmin =
    round(x1) + 1``, ``xmax = round(x2)``, clamped to ``1..width`` and ``xmax >= xmin``.
    """
    h, w = size
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = path.parent.name
    ET.SubElement(root, "filename").text = path.name
    ET.SubElement(root, "path").text = str(path.resolve())
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "retinanet predict"
    s = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(s, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    lo = np.clip(np.round(boxes[:, :2]) + 1, 1, [w, h]).astype(int)  # [K, 2] xmin, ymin
    hi = np.maximum(np.clip(np.round(boxes[:, 2:]), 1, [w, h]).astype(int), lo)  # [K, 2] xmax, ymax
    for name, (xmin, ymin), (xmax, ymax) in zip(names, lo.tolist(), hi.tolist()):
        obj = ET.SubElement(root, "object")
        for tag, value in (("name", name), ("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(obj, tag).text = value
        bb = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(bb, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _drawn_name(name: str) -> str:
    return name if Path(name).suffix.lower() in _KEEP_SUFFIX else name + ".png"


def _write_outputs(item: dict[str, Any], path: Path, name: str, boxes: np.ndarray, labels, scores, names: list[str], opts: PredictOptions):
    """Drawn image and VOC XML of one image (each only if asked)."""
    out = Path(opts.out)
    if opts.draw:
        target = out / "images" / _drawn_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        original = Image.fromarray(item["original"].permute(1, 2, 0).numpy())
        draw_detections(original, boxes, labels, scores, names).save(target)
    if opts.voc_xml:
        target = (out / "xml" / name).with_suffix(".xml")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(voc_xml(path, item["orig_size"], boxes, names))


def _label_filter(class_names: dict[int, str], wanted: tuple[str, ...]) -> torch.Tensor | None:
    if not wanted:
        return None
    ids = {n: i for i, n in class_names.items()}
    unknown = [n for n in wanted if n not in ids]
    if unknown:
        raise RetinaNetError(f"--classes-filter: unknown class name(s) {', '.join(unknown)}; "
                             f"the model's classes are: {', '.join(class_names.values())}")
    return torch.tensor([ids[n] for n in wanted], dtype=torch.int64)


def write_predictions_json(path: Path, records: list[dict[str, Any]], failures: list[tuple[str, str]]) -> None:
    """``{"images": [...], "failures": [...]}`` with one image or failure per line (greppable)."""

    def block(items: list[dict[str, Any]]) -> str:
        return "[\n" + ",\n".join(json.dumps(r) for r in items) + "\n]" if items else "[]"

    failed = [{"file": f, "error": e} for f, e in failures]
    path.write_text(f'{{"images": {block(records)},\n"failures": {block(failed)}}}\n')


def _process_batch(model, batch, files, class_names, keep_labels, opts: PredictOptions, device):
    """Run one batch and write its outputs: (records, failures) of these images."""
    good = [item for item in batch if item["error"] is None]
    failures = [(str(files[item["index"]][0]), item["error"]) for item in batch if item["error"] is not None]
    outputs = model([item["image"].to(device) for item in good]) if good else []
    records = []
    for item, det in zip(good, outputs):
        path, name = files[item["index"]]
        h0, w0 = item["orig_size"]
        h, w = item["image"].shape[-2:]
        boxes, scores, labels = filter_detections(det, opts.score_thresh, keep_labels, opts.max_dets)
        boxes = boxes.double().numpy() * np.array([w0 / w, h0 / h, w0 / w, h0 / h])  # original pixels
        names = [class_names.get(int(i), f"class {int(i)}") for i in labels]
        try:
            _write_outputs(item, path, name, boxes, labels.tolist(), scores.tolist(), names, opts)
        except Exception as err:  # decoded in the worker but fails here, a full disk, ...
            failures.append((str(path), f"{type(err).__name__}: {err}"))
            continue
        records.append({
            "file": str(path), "width": w0, "height": h0,
            "detections": [
                {"box": [round(float(v), 2) for v in b], "score": round(float(sc), 5), "label": int(c), "class": n}
                for b, sc, c, n in zip(boxes, scores.tolist(), labels.tolist(), names)
            ],
        })
    return records, failures


@torch.inference_mode()
def predict(model, files: list[tuple[Path, str]], class_names: dict[int, str], opts: PredictOptions, device) -> PredictSummary:
    """Detect objects in ``files`` (from ``find_images``) and write the outputs (module docstring).

    Args:
        model: RetinaNet in eval mode on ``device``; its ``config.min_size/max_size`` size inputs.
        files: ``(path, output name)`` pairs.
        class_names: class id -> name (``class_names_of``).
        opts: filtering, batching and output options.
    Returns:
        A ``PredictSummary``; unreadable files are in its ``failures``, they do not raise.
    """
    device = torch.device(device)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    keep_labels = _label_filter(class_names, opts.classes)
    loader = torch.utils.data.DataLoader(
        ImageFiles([p for p, _ in files], model.config.min_size, model.config.max_size, keep_original=opts.draw),
        batch_size=opts.batch_size, num_workers=opts.workers, collate_fn=_collate,
    )
    records, failures = [], []
    with tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr, dynamic_ncols=True, disable=not opts.progress) as bar:
        for batch in loader:
            new_records, new_failures = _process_batch(model, batch, files, class_names, keep_labels, opts, device)
            records += new_records
            failures += new_failures
            for file, reason in new_failures:
                tqdm.write(f"skipped {file}: {reason}", file=sys.stderr)
            bar.update(len(batch))
    json_path = out / "predictions.json"
    write_predictions_json(json_path, records, failures)
    return PredictSummary(len(records), sum(len(r["detections"]) for r in records), failures, out, json_path)
