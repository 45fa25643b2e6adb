"""Evaluate a detector on a data loader: COCO metrics (pycocotools-exact), per-class AP, optional
VOC AP, gathered across DDP ranks.

``evaluate`` runs the model on every batch, maps the detections from the resized frame the model
saw back to each image's original size, gathers detections and ground truth from every rank and
computes the metrics on every rank from the same sorted records, so all ranks return the same
``EvalResult``. The metric code itself lives in ``coco_eval`` and ``voc_eval`` (plain arrays, no
model needed).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinanet.files import ReadOnce, write_atomic
from retinanet.data import ClassMap, build_datasets, build_loader
from retinanet.data.build import coco_files
from retinanet.data.classes import default_class_names
from retinanet.data.coco import read_coco_json
from retinanet.data.progress import progress_bar, reading_progress
from retinanet.engine.runtime.checkpoint import load_model
from retinanet.engine.evaluate.coco import CocoResults, evaluate_coco, over_coco_max_dets, per_class_table
from retinanet.engine.runtime.distributed import (
    all_gather_object, any_rank, barrier, init_distributed, is_dist, is_main_process, local_device,
)
from retinanet.engine.evaluate.plots import plot_pr_curves
from retinanet.engine.runtime.precision import resolve_precision
from retinanet.engine.evaluate.voc import voc_metrics
from retinanet.errors import RetinaNetError
from retinanet.model.tiling import TileOptions, count_tiles, detect_tiled_model, detect_with_cuts
from retinanet.geometry import resize_boxes


@dataclass
class EvalResult:
    """The outcome of one evaluation.

    Attributes:
        metrics: the 12 COCO numbers ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm,
            ARl`` (floats in [0, 1], -1.0 where undefined, as pycocotools).
        per_class: ``[{"class", "id", "AP", "AP50"}]`` in class id order.
        summary_text: the 12 lines exactly as pycocotools prints them.
        detections: all detections in the COCO results format (original image pixels): a
            ``CocoResults``, a sequence of ``{"image_id", "category_id", "bbox", "score"}`` dicts
            made when read (a list given is turned into one).
        voc: None, or ``{"mAP_07", "mAP", "per_class": [{"class", "id", "num_gt", "AP50_07",
            "AP50"}]}`` (VOC protocol, see ``voc_eval``).
        pr_curves: per-class precision at 101 recall points at IoU 0.5 (``CocoEvaluation.pr_curves``).
        num_images: images evaluated (after removing DDP padding duplicates).
        max_dets: detections kept per image (per tile when tiled): the model's ``detections_per_img``.
        at_cap: images (tiles when tiled) whose detections reached ``max_dets``: more were cut.
        at_cap_score: the highest score of the last detection kept by an image (tile) at the cap:
            the detections cut scored at most this (0 when none reached it).
        topk_candidates: candidates per FPN level before NMS (``ModelConfig.candidates_per_level``).
        at_topk: images (tiles) below ``max_dets`` detections whose candidates above the score
            threshold a level's top-k cut (``RetinaNet.detect``'s ``candidates_cut``): more could have come out.
        at_topk_score: the highest score those cut candidates stayed at or below (0 when none).
        skipped: images that could not be decoded (``skip_bad``), left out: "file: why".
        over_coco_max_dets: ``(images, most)``: images with more objects of one class than COCO
            scores detections (100), and the most of one class in an image (``over_coco_max_dets``).
    """

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    summary_text: str
    detections: CocoResults = field(repr=False)
    voc: dict[str, Any] | None = None
    pr_curves: dict[str, Any] | None = field(default=None, repr=False)
    num_images: int = 0
    max_dets: int = 0
    at_cap: int = 0
    at_cap_score: float = 0.0
    topk_candidates: int = 0
    at_topk: int = 0
    at_topk_score: float = 0.0
    skipped: list[str] = field(default_factory=list)
    over_coco_max_dets: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.detections = CocoResults.from_dicts(self.detections)

    def table(self) -> str:
        """Per-class AP table (fractions), with VOC columns when the VOC protocol was run."""
        return per_class_table(self.per_class, self.voc)

    def to_dict(self, include_detections: bool = False) -> dict[str, Any]:
        """Plain JSON-serialisable dict; detections only when asked (they can be large)."""
        out = {
            "num_images": self.num_images,
            "num_detections": len(self.detections),
            "max_dets": self.max_dets,
            "at_max_dets": self.at_cap,
            "at_max_dets_score": self.at_cap_score,
            "topk_candidates": self.topk_candidates,
            "at_topk_candidates": self.at_topk,
            "at_topk_candidates_score": self.at_topk_score,
            "skipped_images": self.skipped,
            "over_coco_max_dets": {"images": self.over_coco_max_dets[0], "most_objects_of_a_class": self.over_coco_max_dets[1]},
            "metrics": self.metrics,
            "summary_text": self.summary_text,
            "per_class": self.per_class,
            "voc": self.voc,
            "pr_curves": self.pr_curves,
        }
        if include_detections:
            out["detections"] = self.detections.to_list()
        return out

    def to_json(self, include_detections: bool = False, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(include_detections), indent=indent)


def class_map_dict(class_map: Any) -> dict[str, int] | None:
    """``{"name": id}`` from a ``ClassMap`` (``to_dict()``), a dict, or None."""
    if class_map is None:
        return None
    if hasattr(class_map, "to_dict"):
        class_map = class_map.to_dict()
    return {str(k): int(v) for k, v in dict(class_map).items()}


def _to_original(boxes: torch.Tensor, size: tuple[int, int], orig_size: tuple[int, int]) -> np.ndarray:
    """``[N, 4]`` xyxy boxes in an image of ``size`` (H, W) -> pixels of ``orig_size`` (H0, W0)."""
    return resize_boxes(boxes.detach().cpu().to(torch.float64).reshape(-1, 4), size, orig_size).numpy()


def _gt_record(target: dict[str, Any], image_hw: tuple[int, int]) -> dict[str, Any]:
    """Ground truth of one dataset target in original pixels (``coco_eval`` format)."""
    orig = tuple(int(v) for v in target["orig_size"])
    size = tuple(int(v) for v in target.get("size", image_hw))  # the frame of target["boxes"]
    labels = target["labels"].cpu().numpy().astype(np.int64)
    ignore = target.get("ignore", torch.zeros(len(labels), dtype=torch.bool))
    # the boxes as read when the dataset kept them: a round trip through the resized frame in float32
    # moves a 32 x 32 box to area 1024.00003, out of COCO's "small" (pycocotools, on the file, keeps it)
    boxes = (target["orig_boxes"].detach().cpu().to(torch.float64).reshape(-1, 4).numpy() if "orig_boxes" in target
             else _to_original(target["boxes"], size, orig))
    areas = {"areas": target["area"].cpu().numpy().astype(np.float64)} if "area" in target else {}
    return {
        "image_id": int(target["image_id"]),
        "boxes": boxes,
        **areas,
        "labels": labels,
        "ignore": ignore.cpu().numpy().astype(bool),
        "height": orig[0],
        "width": orig[1],
        **({"skipped": list(target["skipped"])} if target.get("skipped") else {}),  # undecodable images it replaced
    }


def _det_record(out: dict[str, np.ndarray], image_hw: tuple[int, int], gt: dict[str, Any], at_cap: int,
                at_cap_score: float = 0.0, at_topk: int = 0, at_topk_score: float = 0.0) -> dict[str, Any]:
    """The model's detections of one image (host arrays, in the frame of the image given) in original
    pixels; ``at_cap``: 1 when they reached the model's cap (tiled: the tiles that reached it);
    ``at_topk``: 1 when a level's top-k cut candidates instead (tiled: the tiles); each with the
    score what was cut stayed at or below (``EvalResult``)."""
    return {
        "image_id": gt["image_id"],
        "boxes": _to_original(torch.from_numpy(out["boxes"]), image_hw, (gt["height"], gt["width"])),
        "scores": out["scores"],
        "labels": out["labels"],
        "at_cap": int(at_cap),
        "at_cap_score": float(at_cap_score),
        "at_topk": int(at_topk),
        "at_topk_score": float(at_topk_score),
    }


def detections_to_host(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    """A batch's detections copied to the host in one transfer (not three per image).

    Args:
        outputs: per image ``{"boxes": [K_i, 4], "scores": [K_i], "labels": [K_i]}`` on any device.
    Returns:
        per image ``{"boxes": [K_i, 4] float64, "scores": [K_i] float64, "labels": [K_i] int64}``.
    """
    if not outputs:
        return []
    # [sum K_i, 6] packed in float32 on the device (mps has no float64): the boxes and scores are float32 or
    # narrower and the labels small ints, so every value is exact, and widened to float64 on the host
    packed = torch.cat([torch.cat([o["boxes"].float(), o["scores"].float()[:, None], o["labels"].float()[:, None]], 1)
                        for o in outputs]).cpu().numpy().astype(np.float64)
    parts = np.split(packed, np.cumsum([len(o["scores"]) for o in outputs])[:-1])
    return [{"boxes": p[:, :4], "scores": p[:, 4], "labels": p[:, 5].astype(np.int64)} for p in parts]


class EvaluationCut(Exception):
    """``evaluate(stop=...)`` was asked to stop part way (a signal to the training run): its numbers
    would cover part of the split, so there are none."""


def collect_tiled(model, loader, device: torch.device, tile: TileOptions, amp: str | bool = "off", progress: bool = True,
                  stop: Callable[[], bool] | None = None):
    """``collect_predictions`` tile by tile: ``loader`` yields images at native resolution (a dataset
    built with ``resize_val=False``); each runs through ``detect_tiled_model``; the bar counts tiles."""
    precision = resolve_precision(amp, device)
    gt, dets = [], []
    with progress_bar(total=0, desc="eval", unit="tile", show=progress and is_main_process()) as bar:
        for images, targets in loader:
            if stop is not None and stop():
                break
            bar.total += sum(count_tiles(tuple(img.shape[-2:]), tile.tile, tile.overlap) for img in images)
            bar.refresh()
            for img, target in zip(images, targets):
                done = [0]

                def on_tiles(n: int, _total: int) -> None:
                    bar.update(n - done[0])
                    done[0] = n
                with precision.autocast(device.type):
                    found = detect_tiled_model(model, img, tile, model.config.score_thresh, on_tiles)
                image_hw = tuple(int(v) for v in img.shape[-2:])
                gt.append(_gt_record(target, image_hw))
                out = {"boxes": found.boxes.double().numpy(), "scores": found.scores.double().numpy(),
                       "labels": found.labels.numpy()}
                dets.append(_det_record(out, image_hw, gt[-1], found.tiles_at_cap, found.at_cap_score,
                                        found.tiles_candidates_cut, found.candidates_cut_score))
    return gt, dets


def detections_cap(model) -> int | None:
    """The model's detections per image (``config.detections_per_img``); None for a model without one."""
    return getattr(getattr(model, "config", None), "detections_per_img", None)


def collect_predictions(model, loader, device: torch.device, amp: str | bool = "off", progress: bool = True,
                        stop: Callable[[], bool] | None = None):
    """Run ``model`` over ``loader``: per-image ground truth and detections in original pixels.

    Args:
        amp: mixed precision mode (``retinanet.engine.runtime.precision.AMP_MODES``).
    Returns:
        (gt, dets): lists of per-image dicts (``coco_eval`` formats; numpy arrays), this rank only.
    """
    precision = resolve_precision(amp, device)
    gt, dets = [], []
    batches = progress_bar(loader, desc="eval", unit="batch", show=progress and is_main_process())
    for images, targets in batches:
        if stop is not None and stop():
            break
        with precision.autocast(device.type):
            outputs, cuts = detect_with_cuts(model, [img.to(device, non_blocking=True) for img in images])
        cap = detections_cap(model)
        for img, target, out, cut in zip(images, targets, detections_to_host(outputs), cuts):
            image_hw = tuple(int(v) for v in img.shape[-2:])
            gt.append(_gt_record(target, image_hw))
            full = cap is not None and len(out["scores"]) >= cap
            dets.append(_det_record(out, image_hw, gt[-1], full, float(out["scores"][-1]) if full else 0.0, cut > 0, cut))
    return gt, dets


def gather_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of every rank, one per ``image_id`` (DDP samplers pad with repeats), sorted."""
    merged = {}
    for part in all_gather_object(records):
        for r in part:
            merged.setdefault(int(r["image_id"]), r)
    return [merged[k] for k in sorted(merged)]


def compute_metrics(gt, dets, class_map: dict[str, int] | None, voc: bool = False, backend: str | None = None) -> EvalResult:
    """``EvalResult`` of per-image ground truth and detections (no model involved).

    Args:
        class_map: ``{"name": id}`` of the evaluated classes; None = the ids found in ``gt``,
            named "class N".
    """
    if class_map:
        items = sorted(class_map.items(), key=lambda kv: kv[1])
        ids, names = [i for _, i in items], [n for n, _ in items]
    else:
        ids = sorted({int(v) for g in gt for v in np.asarray(g["labels"]).ravel()})
        names = [f"class {i}" for i in ids]
    coco = evaluate_coco(gt, dets, ids, names, backend)
    return EvalResult(
        metrics=coco.metrics,
        per_class=coco.per_class,
        summary_text=coco.summary_text,
        detections=coco.detections,
        voc=voc_metrics(gt, dets, ids, names) if voc else None,
        pr_curves=coco.pr_curves(0.5),
        num_images=len(gt),
        over_coco_max_dets=over_coco_max_dets(gt),
    )


@torch.inference_mode()
def evaluate(model, loader, *, device, class_map, amp: str | bool = "auto", progress: bool = True, voc: bool = False,
             backend: str | None = None, tile: TileOptions | None = None, stop: Callable[[], bool] | None = None,
             ) -> EvalResult:
    """Evaluate ``model`` on every batch of ``loader`` (all ranks must call it).

    Args:
        model: a RetinaNet (or DDP-wrapped one); put in eval mode for the call, mode restored after.
        loader: yields ``(images, targets)`` as ``retinanet.data.build_loader`` (targets with
            ``boxes`` in the resized frame, ``labels``, ``ignore``, ``image_id``, ``orig_size``,
            ``size``).
        device: where the model runs.
        class_map: ``ClassMap`` or ``{"name": id}`` of the dataset; None = ids found in the data.
        amp: mixed precision mode (``retinanet.engine.runtime.precision``: auto = bf16/fp16 where the
            hardware has it).
        progress: progress on stderr (main process only): a bar on a terminal, else a line every 10 s.
        voc: also compute the VOC protocol AP50 (11-point and all-point).
        backend: COCOeval implementation, see ``coco_eval.run_cocoeval`` (default pycocotools).
        tile: resolved ``TileOptions``: tiled prediction on native-resolution images (the loader's
            dataset built with ``resize_val=False``); None: the model's own resize.
        stop: checked before each batch: True cuts the evaluation short (a training run's stop
            signal); every rank must give it or none.
    Returns:
        The same ``EvalResult`` on every rank.
    Raises:
        EvaluationCut: ``stop`` said so on some rank (on every rank, together).
    """
    model = getattr(model, "module", model)  # DDP's forward would sync buffers for nothing
    was_training = model.training
    model.eval()
    try:
        if tile is not None:
            gt, dets = collect_tiled(model, loader, torch.device(device), tile, amp, progress, stop)
        else:
            gt, dets = collect_predictions(model, loader, torch.device(device), amp, progress, stop)
    finally:
        model.train(was_training)
    if stop is not None and any_rank(stop()):  # every rank asks, at the same point
        raise EvaluationCut
    # before the merge keeps one record per image id: an undecodable image's replacement repeats an id
    skipped = sorted({m for part in all_gather_object([m for g in gt for m in g.get("skipped", ())]) for m in part})
    gt, dets = gather_records(gt), gather_records(dets)
    result = compute_metrics(gt, dets, class_map_dict(class_map), voc, backend)
    config = getattr(model, "config", None)
    return dataclasses.replace(result, max_dets=detections_cap(model) or 0, at_cap=sum(d.get("at_cap", 0) for d in dets),
                               at_cap_score=max((d.get("at_cap_score", 0.0) for d in dets), default=0.0),
                               topk_candidates=config.candidates_per_level() if config is not None else 0,
                               at_topk=sum(d.get("at_topk", 0) for d in dets),
                               at_topk_score=max((d.get("at_topk_score", 0.0) for d in dets), default=0.0),
                               skipped=skipped)


def write_eval_outputs(result: EvalResult, out_dir: str | os.PathLike, *, category_ids: dict[int, int] | None = None,
                       image_files: dict[int, str] | None = None) -> dict[str, Path]:
    """Write ``eval.json`` (everything but the detections), ``detections.json`` (COCO results
    format) and ``pr_curves.png`` (per-class precision-recall grid) into ``out_dir``.

    Args:
        category_ids: class id -> the dataset's own category id, where they differ (a COCO file read
            by name into a checkpoint's class map): ``detections.json`` then scores against that file.
        image_files: image id -> file, written to ``eval.json`` (``image_files``): VOC and YOLO ids
            are positions in the split.
    Returns:
        ``{"eval": path, "detections": path, "pr_curves": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"eval": out / "eval.json", "detections": out / "detections.json", "pr_curves": out / "pr_curves.png"}
    info = result.to_dict()
    if image_files:
        info["image_files"] = {str(k): v for k, v in sorted(image_files.items())}
    dets = result.detections
    if category_ids:
        dets = dets.with_category_ids(category_ids)
        info["detections_category_ids"] = "the dataset's own category ids (class id -> category id: " + ", ".join(
            f"{k} -> {v}" for k, v in sorted(category_ids.items())) + ")"
    write_atomic(paths["eval"], json.dumps(info, indent=2) + "\n")
    write_atomic(paths["detections"], lambda f: (dets.write_json(f), f.write(b"\n")))
    ap50 = {r["class"]: r["AP50"] for r in result.per_class}
    plot_pr_curves(result.pr_curves or {"iou": 0.5, "recall": [], "precision": {}}, paths["pr_curves"], ap50)
    return paths


def dataset_category_ids(data_cfg, datasets) -> dict[int, int] | None:
    """Class id -> the COCO file's own category id of the same name, where some differ (the file
    was read by name into another class map); None for other formats or when every id agrees."""
    if datasets.format != "coco":
        return None
    path = coco_files(data_cfg, datasets.root, ("val",))["val"]
    names = {c["name"]: c["id"] for c in read_coco_json(path)["categories"] if isinstance(c, dict) and "name" in c}
    ids = {cid: names[n] for n, cid in datasets.class_map.to_dict().items() if n in names}
    return ids if any(k != v for k, v in ids.items()) else None


def class_map_problems(model_map: dict[str, int] | None, data_map: dict[str, int], num_outputs: int) -> list[str]:
    """Ways the model's class ids disagree with the dataset's (empty when they agree).

    Args:
        model_map: the checkpoint's ``{"name": id}`` (for an official torchvision file: COCO names
            at COCO category ids); None when unknown.
        data_map: the dataset's ``{"name": id}``.
        num_outputs: the model's ``num_classes`` (ids it can predict are ``1..num_outputs-1``).
    """
    problems = []
    too_big = sorted(n for n, i in data_map.items() if i >= num_outputs)
    if too_big:
        problems.append(f"the model predicts ids 1..{num_outputs - 1} but the dataset has classes with larger ids: {', '.join(too_big)}")
    if model_map is not None:
        missing = sorted(n for n in data_map if n not in model_map)
        moved = sorted(n for n, i in data_map.items() if n in model_map and model_map[n] != i)
        if missing:
            problems.append(f"dataset classes unknown to the model: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if moved:
            problems.append(f"classes with different ids in model and dataset: {', '.join(moved[:20])}")
    return problems


@dataclass(frozen=True)
class EvalOptions:
    """What ``run_eval`` needs besides the data config; ``model_overrides`` replace
    ``ModelConfig`` fields of the checkpoint (``min_size``, ``max_size``, ``score_thresh``)."""

    weights: str
    out: str | None = None
    voc: bool = False
    batch_size: int = 2
    workers: int = 2
    device: str = "auto"
    amp: str | bool = "auto"  # retinanet.engine.runtime.precision.AMP_MODES
    channels_last: bool = True
    progress: bool = True
    backend: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    tile: TileOptions | None = None  # tiled prediction; its tile side None = the model's input size


@dataclass
class EvalRun:
    """``run_eval``'s outcome: the result, files written (main process) and class-map warnings."""

    result: EvalResult
    paths: dict[str, Path]
    warnings: list[str]
    precision: str = ""  # what ``opts.amp`` resolved to, and why (``Precision.describe``)
    tiling: str = ""  # the tiling used (``TileOptions.describe``), "" when none


def run_eval(data_cfg, opts: EvalOptions, once: ReadOnce | None = None) -> EvalRun:
    """Evaluate a checkpoint (ours or an official torchvision file) on ``data_cfg``'s val split
    (the only split read: the training split need not exist).

    Joins torchrun's process group when launched by it (each rank evaluates its share); the
    main process writes ``write_eval_outputs`` into ``opts.out`` when given. The dataset is read
    with the checkpoint's class map (unless ``data_cfg.classes`` is given), so ids match the
    model's; for an official torchvision file (labels = COCO category ids) the dataset's own map
    is kept and mismatches are returned as warnings. ``once``: the checkpoint as the caller read it
    (``stored_config``), loaded without reading the file again.
    """
    try:  # the device, the checkpoint and the data: every process meets a problem there alike
        device = local_device(opts.device)
        init_distributed(device)
        model, model_map = load_model(opts.weights, device, channels_last=opts.channels_last, once=once,
                                      **opts.model_overrides)
        cfg = model.config
        # our checkpoint knows its class ids: read the data with them, not rediscovered ones
        class_map = (ClassMap(model_map, source=f"class map of {Path(opts.weights).name}")
                     if model_map and data_cfg.classes is None else None)
        tile = opts.tile.resolved(cfg.min_size) if opts.tile is not None else None
        with reading_progress(opts.progress and is_main_process()) as tell:
            datasets = build_datasets(data_cfg, min_size=cfg.min_size, max_size=cfg.max_size, splits=("val",),
                                      class_map=class_map, resize_val=tile is None, progress=tell)
        if not len(datasets.val):  # named by the file read (a COCO root is the training file)
            where = coco_files(data_cfg, datasets.root, ("val",))["val"] if datasets.format == "coco" else datasets.root
            raise RetinaNetError(f"{where}: the split {data_cfg.val_split!r} has no images to evaluate")
    except RetinaNetError as err:
        err.every_rank = True  # under torchrun the command line prints it once
        raise
    data_map = class_map_dict(datasets.class_map) or {}
    known = default_class_names(cfg.num_classes)  # an official torchvision file: COCO's ids
    if model_map is None and known:
        model_map = {n: i for i, n in known.items()}
    warnings = class_map_problems(model_map, data_map, cfg.num_classes)
    precision = resolve_precision(opts.amp, device)  # an impossible mode fails before the data is read
    loader = build_loader(datasets.val, batch_size=opts.batch_size, workers=opts.workers, train=False,
                          distributed=is_dist(), seed=0, pin_memory=device.type == "cuda")
    result = evaluate(model, loader, device=device, class_map=data_map, amp=precision.mode, progress=opts.progress,
                      voc=opts.voc, backend=opts.backend, tile=tile)
    paths = (write_eval_outputs(result, opts.out, category_ids=dataset_category_ids(data_cfg, datasets),
                                image_files={int(r.image_id): r.file for r in datasets.val.records})
             if opts.out and is_main_process() else {})
    barrier()
    return EvalRun(result, paths, warnings, precision.describe(), tile.describe() if tile else "")
