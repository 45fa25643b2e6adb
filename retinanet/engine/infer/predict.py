"""Run a detector on image files: drawn images, a JSON of all detections, optional VOC XML / YOLO labels.

Inputs are files, folders (``recursive`` to descend) or glob patterns. A ``DataLoader`` decodes
(with the detector's EXIF rule and pixel limit) and resizes in worker processes;
``Detector.detect_resized`` runs each batch and maps the boxes back to original pixels. With
``tile`` (``--tile``) each image is decoded at full size and run tile by tile
(``Detector.detect_tiled``), ``batch_size`` tiles at a time; the progress bar counts tiles. A file
that cannot be read or written is reported (file and reason) and skipped; the run goes on.

Outputs under ``out``::

    images/<name>          each image with its detections drawn (unless draw=False; ``draw.draw_detections``:
                           labels only where they fit, ``line_width``, ``draw_labels``, ``draw_conf``;
                           a JPEG at quality 95 without chroma subsampling: ``save_drawn``)
    xml/<name>.xml         VOC annotation per image (voc_xml=True), 1-based pixels as our reader
    labels/<name>.txt      YOLO labels per image (yolo_txt=True): "class cx cy w h [score]",
                           normalised, class = our id - 1; empty file = no detection
    data.yaml              (yolo_txt=True) ``names: {yolo id: name}`` of the model's classes
    predictions.json       {"images": [{"file", "name", "outputs", "width", "height", "at_cap", "detections":
                           [{"box", "score", "label", "class"}]}], "failures": [{"file", "error"}]}
                           (``name``: the image's output name, ``find_images``': ``x_1.png`` for a second
                           ``x.png``; ``outputs``: ``output_record``, the files written for it, relative
                           to ``out``; ``at_cap``: ``Detections.at_cap``, null when no cap cut the
                           image's detections)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from retinanet.files import write_atomic
from retinanet.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, is_image_file, not_read, open_rgb, oriented_size
from retinanet.data.progress import progress_bar
from retinanet.data.workers import QuietWorkersLoader
from retinanet.engine.infer.detector import (Detections, Detector, TileOptions, class_names_of, count_tiles,
                                            filter_detections)
from retinanet.engine.infer.draw import draw_detections
from retinanet.errors import RetinaNetError
from retinanet.geometry import resize_image

__all__ = ["PredictOptions", "PredictSummary", "class_names_of", "filter_detections", "find_images", "predict",
           "voc_xml", "yolo_lines"]

_KEEP_SUFFIX = (".jpg", ".jpeg", ".png")  # drawn images keep these; other formats get ".png" added
# a drawn JPEG: PIL's defaults (quality 75, 4:2:0 chroma subsampling: colour at half resolution) blur
# 1-2 px coloured box lines into the pixels around them; 4:4:4 at quality 95 keeps them, in files about 3x
# larger (a drawn 640x480 photo: 57 -> 158 KiB)
JPEG_OPTIONS = {"quality": 95, "subsampling": 0}


@dataclass(frozen=True)
class PredictOptions:
    """How ``predict`` filters, batches and writes.

    ``score_thresh``: keep detections scoring above this; ``classes``: class names to keep
    (empty = all); ``max_dets``: per image, highest scores first (None: the model's
    ``detections_per_img``).
    """

    out: str = "runs/predict"
    score_thresh: float = 0.3
    classes: tuple[str, ...] = ()
    max_dets: int | None = None
    batch_size: int = 4
    workers: int = 2
    draw: bool = True
    line_width: int | None = None  # drawn box lines (px); None: by the image and each box (draw.draw_detections)
    draw_labels: bool = True  # drawn images: a "name score" label by each box, where it fits
    draw_conf: bool = True  # the score in those labels
    voc_xml: bool = False
    yolo_txt: bool = False
    save_conf: bool = False  # YOLO labels: append the score (as ultralytics' save_conf)
    progress: bool = True
    tile: TileOptions | None = None  # tiled prediction (resolved: tile side set); batch_size then counts tiles


@dataclass
class PredictSummary:
    """Counts and locations of a ``predict`` run; ``failures`` are ``(file, reason)``."""

    num_images: int
    num_detections: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    out: Path = Path(".")
    json_path: Path = Path("predictions.json")
    at_cap: int = 0  # images whose detections reached max_dets (more above the threshold were cut)
    max_dets: int = 300
    earlier: dict[str, int] = field(default_factory=dict)  # output folder -> files of an earlier run left beside this one's
    unlabelled: tuple[int, int] = (0, 0)  # (drawn boxes whose label did not fit, images with such boxes)
    at_topk: int = 0  # images below max_dets whose candidates a level's top-k cut (Detections.at_cap "topk_candidates")
    topk_candidates: int = 1000  # the candidates per level kept for NMS

    def text(self) -> str:
        lines = [
            f"{self.num_images} image(s) processed, {self.num_detections} detection(s), {len(self.failures)} failure(s)",
            f"detections: {self.json_path}",
        ]
        if self.at_cap:
            lines.append(f"warning: {self.at_cap} image(s) reached --max-dets {self.max_dets}: detections above "
                         "--score-thresh beyond it were cut; give a larger --max-dets to keep them")
        if self.at_topk:
            lines.append(f"warning: {self.at_topk} image(s) stayed below --max-dets {self.max_dets} while an FPN level had "
                         f"more candidates above --score-thresh than the {self.topk_candidates} it keeps for NMS: those were "
                         "never considered; give a larger --topk-candidates to keep them")
        if (self.out / "images").is_dir():
            lines.append(f"drawn images: {self.out / 'images'}")
        if self.unlabelled[0]:
            lines.append(f"note: {self.unlabelled[0]} drawn box(es) in {self.unlabelled[1]} image(s) have no label: it did not fit "
                         "beside the other boxes and labels (crowded or small objects); the box colour tells the class, "
                         f"{self.json_path.name} has every detection (--hide-labels: no labels at all)")
        if (self.out / "xml").is_dir():
            lines.append(f"VOC XML: {self.out / 'xml'}")
        if (self.out / "labels").is_dir():
            lines.append(f"YOLO labels: {self.out / 'labels'} (class names: {self.out / 'data.yaml'})")
        if self.earlier:
            where = ", ".join(f"{n} in {self.out / d}" for d, n in self.earlier.items())
            lines.append(f"warning: {sum(self.earlier.values())} file(s) are from an earlier run into {self.out} "
                         f"({where}), kept beside this run's: {self.json_path.name} lists only this run's images; "
                         "give a new --out to keep runs apart")
        return "\n".join(lines)


def find_images(inputs: list[str], recursive: bool = False) -> list[tuple[Path, str]]:
    """Image files named by ``inputs`` (files, folders, globs), each with a unique output name.

    Folders give their files of an image type (``data.images.is_image_file``, the types every
    dataset reader reads; descending when ``recursive``; other files are named in a warning), named by
    their path inside the folder; a file or glob match is named by its file name. A file named
    again is listed once, with a warning; equal names get ``_1``, ``_2``... before the extension.

    Raises:
        RetinaNetError: an input that is neither a file, a folder nor a matching pattern, or no
            image at all.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            every = [f for f in p.glob(pattern) if f.is_file()]
            files = sorted(f for f in every if is_image_file(f))
            found += [(f, f.relative_to(p).as_posix()) for f in files]
            for msg in not_read([f for f in every if not is_image_file(f)], p, " (skipped)"):
                warnings.warn(msg, stacklevel=2)
            subs = [] if recursive else sorted(d.name for d in p.iterdir() if d.is_dir())
            if subs:  # images there are not read: said, not silently left out
                warnings.warn(f"{p}: {len(subs)} sub-folder(s) not searched ({', '.join(subs[:5])}"
                              f"{' ...' if len(subs) > 5 else ''}): --recursive descends into them", stacklevel=2)
        elif p.is_file():
            found.append((p, p.name))
        elif glob.has_magic(item):
            files = sorted(Path(f) for f in glob.glob(item, recursive=recursive) if Path(f).is_file())
            if not files:
                raise RetinaNetError(f"{item}: the pattern matches no file")
            found += [(f, f.name) for f in files]
        elif "://" in item:
            raise RetinaNetError(f"{item}: URLs are not read; download the file and give its path")
        else:
            raise RetinaNetError(f"{item}: no such file or folder")
    if not found:
        raise RetinaNetError(f"no images found in {', '.join(inputs)} (extensions: {' '.join(IMAGE_SUFFIXES)}"
                             f"{'' if recursive else '; use --recursive for sub-folders'})")
    seen_files, taken, out, again = set(), set(), [], []
    for path, name in found:
        key = path.resolve()
        if key in seen_files:
            again.append(str(path))
            continue
        seen_files.add(key)
        stem, suffix = os.path.splitext(name)
        unique, n = name, 0
        while os.path.splitext(unique)[0].lower() in taken:  # also keeps xml/<stem>.xml unique
            n += 1
            unique = f"{stem}_{n}{suffix}"
        taken.add(os.path.splitext(unique)[0].lower())
        out.append((path, unique))
    if again:
        warnings.warn(f"{len(again)} input(s) name a file already named, each read once: {', '.join(again[:5])}"
                      f"{' ...' if len(again) > 5 else ''}", stacklevel=2)
    return out


class ImageFiles(torch.utils.data.Dataset):
    """Decode + resize image files for the model; a failure is returned, not raised.

    Items: ``{"index", "image": uint8 [3, h, w] resized or None, "original": uint8 [3, H0, W0]
    (only with ``keep_original``, for drawing) or None, "orig_size": (H0, W0), "error": None or
    str}``.
    """

    def __init__(self, files: list[Path], min_size: int, max_size: int, keep_original: bool = False, *,
                 exif: str = "auto", max_pixels: int | None = DEFAULT_MAX_PIXELS, resize: bool = True):
        self.files, self.min_size, self.max_size, self.resize = files, min_size, max_size, resize
        self.keep_original, self.exif, self.max_pixels = keep_original, exif, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            img = open_rgb(self.files[index], exif=self.exif, max_pixels=self.max_pixels)  # raises on a corrupt file
            tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # [3, H0, W0] uint8
            resized = resize_image(tensor, self.min_size, self.max_size) if self.resize else tensor
            original = tensor if self.keep_original else None
            return {"index": index, "image": resized, "original": original, "orig_size": (img.height, img.width), "error": None}
        except Exception as err:  # any decoder error: report the file and go on
            return {"index": index, "image": None, "original": None, "orig_size": (0, 0), "error": f"{type(err).__name__}: {err}"}


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


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


def save_drawn(image: Image.Image, path: Path) -> Path:
    """Write drawn ``image`` to ``path`` (atomically) in the format its suffix names: a JPEG with
    ``JPEG_OPTIONS`` (the box lines keep their colour), a PNG as PIL writes it."""
    image_format = Image.registered_extensions()[path.suffix.lower()]
    options = JPEG_OPTIONS if image_format == "JPEG" else {}
    return write_atomic(path, lambda f: image.save(f, format=image_format, **options))


def yolo_lines(boxes: np.ndarray, labels: list[int], scores: list[float], size: tuple[int, int], save_conf: bool = False) -> str:
    """YOLO label text of one image: ``class cx cy w h`` per box, normalised by the image size.

    ``class`` is our id - 1 (YOLO ids start at 0, ours at 1); boxes ``[K, 4]`` continuous xyxy in
    original pixels, clipped to the image first; numbers as ultralytics writes them (``%g``), the
    score appended with ``save_conf``. No box: an empty string (an image with no objects).
    """
    h, w = size
    xyxy = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 0, [w, h, w, h])  # [K, 4]
    cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1) / [w, h, w, h]
    lines = []
    for label, row, score in zip(labels, cxcywh.tolist(), scores):
        values = (int(label) - 1, *row, *((float(score),) if save_conf else ()))
        lines.append(("%g " * len(values)).rstrip() % values)
    return "".join(line + "\n" for line in lines)


def yolo_names_yaml(class_names: dict[int, str]) -> str:
    """``data.yaml``-style class names of the model: ``names: {our id - 1: name}`` (a map, so ids with
    gaps, like COCO's, keep their numbers); merge it into a dataset's ``data.yaml``."""
    lines = ["# class names of the YOLO labels written by `retinanet predict --save-txt` (YOLO id = our id - 1);",
             "# add train:/val: entries to use this as a dataset's data.yaml", "names:"]
    lines += [f"  {i - 1}: {json.dumps(n)}" for i, n in sorted(class_names.items())]
    return "\n".join(lines) + "\n"


OUTPUT_FOLDERS = ("images", "xml", "labels")  # per-image outputs under ``out``


def output_paths(name: str, opts: PredictOptions) -> dict[str, Path]:
    """Where the per-image outputs asked for by ``opts`` go for the input of output name ``name``:
    ``{"images": drawn image, "xml": VOC XML, "labels": YOLO labels}`` (only those asked for)."""
    out = Path(opts.out)
    paths = {"images": out / "images" / _drawn_name(name), "xml": (out / "xml" / name).with_suffix(".xml"),
             "labels": (out / "labels" / name).with_suffix(".txt")}
    asked = {"images": opts.draw, "xml": opts.voc_xml, "labels": opts.yolo_txt}
    return {k: v for k, v in paths.items() if asked[k]}


def output_record(name: str, opts: PredictOptions) -> dict[str, str]:
    """The per-image outputs of output name ``name`` as ``predictions.json`` records them:
    ``{"images": "images/x_1.png", "xml": "xml/x_1.xml", "labels": "labels/x_1.txt"}`` (those
    asked for; ``/``-separated, relative to ``opts.out``)."""
    return {k: p.relative_to(Path(opts.out)).as_posix() for k, p in output_paths(name, opts).items()}


def files_in_output_folders(out: Path) -> set[Path]:
    """Every file under ``out``'s per-image output folders (``OUTPUT_FOLDERS``)."""
    return {p for d in OUTPUT_FOLDERS if (out / d).is_dir() for p in (out / d).rglob("*") if p.is_file()}


def _write_outputs(item: dict[str, Any], path: Path, name: str, det: Detections, opts: PredictOptions) -> int:
    """Drawn image, VOC XML and YOLO labels of one image (each only if asked; each written atomically).
    Returns the number of drawn boxes whose label did not fit."""
    targets = output_paths(name, opts)
    boxes, labels, scores = det.boxes.double().numpy(), det.labels.tolist(), det.scores.tolist()
    left_out: list[int] = []
    if opts.draw:
        target = targets["images"]
        original = Image.fromarray(item["original"].permute(1, 2, 0).numpy())
        drawn = draw_detections(original, boxes, labels, scores, det.names, line_width=opts.line_width,
                                show_labels=opts.draw_labels, show_conf=opts.draw_conf, left_out=left_out)
        save_drawn(drawn, target)
    if opts.voc_xml:
        write_atomic(targets["xml"], voc_xml(path, det.size, boxes, det.names))
    if opts.yolo_txt:
        write_atomic(targets["labels"], yolo_lines(boxes, labels, scores, det.size, opts.save_conf))
    return len(left_out)


def write_predictions_json(path: Path, records: list[dict[str, Any]], failures: list[tuple[str, str]],
                           not_processed: list[str] | None = None) -> None:
    """``{"images": [...], "failures": [...]}`` with one image or failure per line (greppable);
    a run stopped early adds ``"not_processed": [files]`` (the inputs it did not reach)."""

    def block(items: list[Any]) -> str:
        return "[\n" + ",\n".join(json.dumps(r) for r in items) + "\n]" if items else "[]"

    failed = [{"file": f, "error": e} for f, e in failures]
    rest = f',\n"not_processed": {block(not_processed)}' if not_processed is not None else ""
    write_atomic(path, f'{{"images": {block(records)},\n"failures": {block(failed)}{rest}}}\n')


def _process_batch(detector: Detector, batch, files, opts: PredictOptions, on_tiles=None):
    """Run one batch and write its outputs: (records, failures, unlabelled) of these images; ``unlabelled``:
    per drawn image with any, its boxes whose label did not fit."""
    good = [item for item in batch if item["error"] is None]
    failures = [(str(files[item["index"]][0]), item["error"]) for item in batch if item["error"] is not None]
    if opts.tile is not None:
        dets = [detector.detect_tiled(item["image"], opts.tile, score_thresh=opts.score_thresh, classes=opts.classes,
                                      max_dets=opts.max_dets, on_tiles=on_tiles) for item in good]
    else:
        dets = detector.detect_resized([item["image"] for item in good], [item["orig_size"] for item in good],
                                       score_thresh=opts.score_thresh, classes=opts.classes, max_dets=opts.max_dets)
    records, unlabelled = [], []
    for item, det in zip(good, dets):
        path, name = files[item["index"]]
        try:
            left_out = _write_outputs(item, path, name, det, opts)
        except Exception as err:  # decoded in the worker but fails here, a full disk, ...
            failures.append((str(path), f"{type(err).__name__}: {err}"))
            continue
        unlabelled += [left_out] if left_out else []
        records.append({
            "file": str(path), "name": name, "outputs": output_record(name, opts), "width": det.size[1],
            "height": det.size[0], "at_cap": det.at_cap,
            "detections": [
                {"box": [round(float(v), 2) for v in b], "score": round(float(sc), 5), "label": int(c), "class": n}
                for b, sc, c, n in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), det.names)
            ],
        })
    return records, failures, unlabelled


def predict(detector: Detector, files: list[tuple[Path, str]], opts: PredictOptions) -> PredictSummary:
    """Detect objects in ``files`` (from ``find_images``) and write the outputs (module docstring).

    Args:
        detector: the model, its class names and image-reading rule (``Detector.load``).
        files: ``(path, output name)`` pairs.
        opts: filtering, batching and output options.
    Returns:
        A ``PredictSummary``; unreadable files are in its ``failures``, they do not raise.
    Raises:
        RetinaNetError: a class name in ``opts.classes`` the model does not have.
    """
    out = Path(opts.out)
    opts = dataclasses.replace(opts, max_dets=detector.max_dets_of(opts.max_dets))
    detector.label_ids(opts.classes)  # an unknown class name fails before any work
    out.mkdir(parents=True, exist_ok=True)
    before = files_in_output_folders(out)
    if opts.yolo_txt:
        write_atomic(out / "data.yaml", yolo_names_yaml(detector.class_names))
    c = detector.model.config
    tiled = opts.tile is not None
    images = ImageFiles([p for p, _ in files], c.min_size, c.max_size, keep_original=opts.draw,
                        exif=detector.exif, max_pixels=detector.max_image_pixels, resize=not tiled)
    # tiled: one image per loader item (its tiles are the batch), decoded ahead by the workers
    loader = QuietWorkersLoader(images, batch_size=1 if tiled else opts.batch_size, num_workers=opts.workers,
                                collate_fn=_collate, pin_memory=detector.device.type == "cuda")
    records, failures, unlabelled = [], [], []
    json_path = out / "predictions.json"
    try:
        _run_batches(detector, loader, files, opts, records, failures, unlabelled)
    except KeyboardInterrupt:  # what is done is kept: the detections so far, and the inputs not reached
        seen = {r["file"] for r in records} | {f for f, _ in failures}
        rest = [str(p) for p, _ in files if str(p) not in seen]
        write_predictions_json(json_path, records, failures, rest)
        print(f"predict: interrupted after {len(records)} of {len(files)} image(s): their detections are in {json_path} "
              f"(its \"not_processed\" lists the {len(rest)} not reached)", file=sys.stderr, flush=True)
        raise
    write_predictions_json(json_path, records, failures)
    at_cap = sum(r["at_cap"] == "max_dets" for r in records)
    at_topk = sum(r["at_cap"] == "topk_candidates" for r in records)
    done = {r["file"] for r in records}
    written = {p for path, name in files if str(path) in done for p in output_paths(name, opts).values()}
    earlier: dict[str, int] = {}
    for p in before - written:
        folder = p.relative_to(out).parts[0]
        earlier[folder] = earlier.get(folder, 0) + 1
    model_cap = max(opts.max_dets, c.detections_per_img)  # what the model ran with (Detector.detect_resized)
    return PredictSummary(len(records), sum(len(r["detections"]) for r in records), failures, out, json_path, at_cap,
                          opts.max_dets, dict(sorted(earlier.items())), (sum(unlabelled), len(unlabelled)), at_topk,
                          c.candidates_per_level(model_cap))


def header_tiles(detector: Detector, paths: list[Path], tile: TileOptions) -> list[int]:
    """Tiles of each image in ``paths`` from its header alone (no decode; 0 for a file that cannot be
    opened: the decode reports it), so that a tiled run's progress counts against all its tiles from
    the start (with the total growing image by image, 72 tiles of 600 read ``72/100 (72%)``)."""
    counts = []
    for path in paths:
        try:
            hw = oriented_size(path, exif=detector.exif, max_pixels=detector.max_image_pixels)
        except Exception:  # a bad file: named when the loader decodes it
            hw = (0, 0)
        counts.append(count_tiles(hw, tile.tile, tile.overlap) if min(hw) > 0 else 0)
    return counts


def _run_batches(detector: Detector, loader, files: list[tuple[Path, str]], opts: PredictOptions,
                 records: list[dict[str, Any]], failures: list[tuple[str, str]], unlabelled: list[int]) -> None:
    """``predict``'s loop with its progress bar: each batch's records, failures and unlabelled boxes
    (``_process_batch``) are appended as it ends."""
    tiled = opts.tile is not None
    expected = header_tiles(detector, [p for p, _ in files], opts.tile) if tiled and opts.progress else [0] * len(files)
    total, unit = (sum(expected), "tile") if tiled else (len(files), "image")
    with progress_bar(total=total, desc="predict", unit=unit, show=opts.progress) as bar:
        for batch in loader:
            if tiled:  # the total is every image's tiles from the headers; a decoded image corrects its own
                bar.total += sum((count_tiles(item["orig_size"], opts.tile.tile, opts.tile.overlap)
                                  if item["error"] is None else 0) - expected[item["index"]] for item in batch)
                bar.refresh()
                done = [0]

                def on_tiles(n: int, _total: int) -> None:
                    bar.update(n - done[0])
                    done[0] = n
            new_records, new_failures, new_unlabelled = _process_batch(detector, batch, files, opts, on_tiles if tiled else None)
            records.extend(new_records)
            unlabelled.extend(new_unlabelled)
            failures.extend(new_failures)
            for file, reason in new_failures:
                tqdm.write(f"skipped {file}: {reason}", file=sys.stderr)
            if not tiled:
                bar.update(len(batch))
