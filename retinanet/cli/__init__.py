"""Command-line interface: ``retinanet SUBCOMMAND ...`` (also ``python -m retinanet``).

One short function per sub-command: it turns parsed options into config objects and calls the
engine. Library code raises ``RetinaNetError``; here it becomes one clear line on stderr and exit
status 2 (1 for a dataset check that found problems, 130 for Ctrl-C). ``train`` lives in
``retinanet.cli.train``, ``demo`` in ``retinanet.cli.demo``, the shared dataset options and the
options -> config dicts step in ``retinanet.cli.options``.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import dataclasses
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from retinanet import __version__
from retinanet.files import ReadOnce, check_output_path, drop_output, hold_folder
from retinanet.cli.demo import add_demo_parser, demo_options, run_demo
from retinanet.cli.options import (CHANNELS_LAST_HELP, DEVICE_HELP, QUIET_HELP, WEIGHTS_HELP, add_amp_options, add_cap_options,
                                   add_data_options, add_image_options, add_input_size_options, add_tile_options, any_int, arg_type,
                                   as_trained_tiling,
                                   data_config_from_args, expand_home_options, field_type, fraction, given_options,
                                   non_negative_int, positive_int, tile_options_from_args)
from retinanet.cli.train import add_train_parser, cmd_train
from retinanet.config import DataConfig, ModelConfig, at_least
from retinanet.data import check_dataset, make_synthetic
from retinanet.data.check import anchor_hint, crowd_hint, tile_hint, write_check_outputs
from retinanet.data.synthetic import LARGE
from retinanet.data.workers import MAIN_GUARD_HINT, starting_worker
from retinanet.engine.runtime.allocator import fix_mmap_threshold
from retinanet.engine.runtime.checkpoint import check_weights_given, stored_config, trained_crop
from retinanet.engine.runtime.distributed import cleanup, is_main_process, launch_local_rank, launch_rank, local_device
from retinanet.engine.evaluate.coco import coco_max_dets_note
from retinanet.engine.evaluate.loop import EvalOptions, run_eval
from retinanet.engine.export.onnx_export import DEFAULT_OPSET, ExportOptions, crop_note, export_checkpoint
from retinanet.engine.infer.detector import Detector
from retinanet.engine.infer.predict import PredictOptions, find_images, predict
from retinanet.errors import PlainWarnings, RetinaNetError
from retinanet.model import check_anchor_sizes
from retinanet.model.weights import DETECTOR_URLS

__all__ = ["build_parser", "data_config_from_args", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong option is one line naming the command, not a usage dump, and a ``~``
    in any option value is the home folder (``expand_home_options``)."""

    def parse_known_args(self, args=None, namespace=None):  # parse_args and every sub-command's parse come here
        namespace, extras = super().parse_known_args(args, namespace)
        return expand_home_options(namespace), extras

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --- make-synthetic / check-data (retinanet.data) -------------------------------------------------


def _add_make_synthetic(sub) -> None:
    p = sub.add_parser("make-synthetic", help="write the embedded synthetic VOC-format dataset")
    p.add_argument("out", metavar="OUT", help="output folder (VOCdevkit/VOC2012 layout + classes.json)")
    p.add_argument("--num-train", type=positive_int, help=f"training images [400; --large: {LARGE['num_train']}]")
    p.add_argument("--num-val", type=non_negative_int, help=f"validation images [100; --large: {LARGE['num_val']}]")
    p.add_argument("--image-size", type=field_type("synthetic_size"), help=f"side of the square images, pixels [256; --large: {LARGE['image_size']}]")
    p.add_argument("--seed", type=any_int, default=0, help="random seed; same seed, same bytes [0]")
    g = p.add_argument_group("large images crowded with small objects (tiled prediction, crop training)")
    g.add_argument("--large", action="store_true",
                   help=f"a few big images with many small objects: the bracketed --large defaults, "
                   f"--object-size {' '.join(map(str, LARGE['object_size']))} --objects {LARGE['objects']}")
    g.add_argument("--object-size", type=positive_int, nargs=2, metavar=("MIN", "MAX"),
                   help="object extent range in pixels, whatever the image size (implies --large)")
    g.add_argument("--objects", type=positive_int, metavar="N", help="objects placed per image (implies --large)")
    p.set_defaults(func=cmd_make_synthetic)


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    check_output_path(args.out, folder=True, option="OUT")
    large = args.large or args.object_size is not None or args.objects is not None
    base = LARGE if large else {"num_train": 400, "num_val": 100, "image_size": 256}
    o = {k: base[k] if getattr(args, k) is None else getattr(args, k) for k in ("num_train", "num_val", "image_size")}
    if large:
        o["object_size"] = tuple(args.object_size or LARGE["object_size"])
        o["objects"] = LARGE["objects"] if args.objects is None else args.objects
        lo, hi = o["object_size"]
        if not 4 <= lo <= hi <= o["image_size"] or o["objects"] < 1:
            raise RetinaNetError(f"make-synthetic: --object-size {lo} {hi} --objects {o['objects']}: need 4 <= MIN <= MAX "
                                 f"<= image size ({o['image_size']}) and at least 1 object")
    s = make_synthetic(args.out, seed=args.seed, **o)
    size = o["image_size"]
    kind = f", up to {o['objects']} objects of {lo}-{hi} px per image" if large else ""
    print(f"wrote {s['train']} train + {s['val']} val images ({size}x{size}{kind}), {s['objects']} objects "
          f"of {s['classes']} classes to {args.out} (VOCdevkit/VOC2012, class map {args.out}/classes.json)")
    voc = Path(args.out) / "VOCdevkit" / "VOC2012"
    listed = {n for f in ("train", "val")
              for n in (voc / "ImageSets" / "Main" / f"{f}.txt").read_text(encoding="utf-8").split()}
    stale = [f for d in ("JPEGImages", "Annotations") for f in (voc / d).iterdir() if f.stem not in listed]
    if stale:  # an earlier, larger set in the same folder: the split files are right, a flat read of the folder is not
        print(f"warning: {len(stale)} file(s) of an earlier dataset in {voc} are not part of this one (e.g. "
              f"{stale[0].name}); the split files list only this one's: delete the folder first for a clean set")
    return 0


def _add_check_data(sub) -> None:
    m = ModelConfig()
    p = sub.add_parser("check-data", help="read a dataset as training would and report every problem",
                       description="Read a dataset as training would, decode every image and report every problem. With "
                       "--out DIR also write DIR/report.txt (the per-class tables whole), duplicates.txt (every group of "
                       "same-content images, when there are any) and plots: instances_per_class.png, box_sizes.png (boxes at "
                       "the model's input scale against the anchor sizes) and image_sizes.png.")
    add_data_options(p)
    p.add_argument("--out", metavar="DIR", help="write report.txt and the PNG plots here")
    p.add_argument("--min-size", type=positive_int, default=m.min_size, help=f"short side of the model input the box plot scales to [{m.min_size}]")
    p.add_argument("--max-size", type=positive_int, default=m.max_size, help=f"cap on the long side of the model input [{m.max_size}]")
    p.add_argument("--anchor-sizes", type=positive_int, nargs=5, default=m.anchor_sizes, metavar="PX",
                   help=f"the model's base anchor sides, FPN levels P3..P7 (train --anchor-sizes) [{' '.join(map(str, m.anchor_sizes))}]")
    p.add_argument("--max-dets", type=positive_int, default=m.detections_per_img, metavar="N",
                   help="detections kept per image (train/eval/predict --max-dets): images with more objects are "
                   f"named, with a cap that holds them [{m.detections_per_img}]")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_check_data)


def cmd_check_data(args: argparse.Namespace) -> int:
    check_anchor_sizes(tuple(args.anchor_sizes))  # as train refuses them (5 4 3 2 1 was "OK")
    if args.out:
        check_output_path(args.out, folder=True)  # before the dataset is read
    report = check_dataset(data_config_from_args(args), progress=not args.quiet, out=args.out)
    print(report.summary())
    sizes = tuple(args.anchor_sizes)
    hint = tile_hint(report, args.min_size, args.max_size, sizes) if report.class_map is not None else None
    if args.out:
        paths = write_check_outputs(report, args.out, min_size=args.min_size, max_size=args.max_size, anchor_sizes=sizes)
        print(f"report and plots: {', '.join(str(p) for p in paths)}")
    if report.class_map is not None:  # with the tiling line: these anchors are for whole resized images only
        print(anchor_hint(report, args.min_size, args.max_size, sizes)
              + (" [whole images resized to min_size; for crops and tiles, the tiling line's]" if hint else ""))
    if hint:
        print(hint)
    crowded = crowd_hint(report, args.max_dets)
    if crowded:
        print(crowded)
    return 0 if report.ok else 1


# --- eval / predict (retinanet.engine.evaluate.loop, retinanet.engine.infer.predict) -------------------------


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="COCO (and VOC) metrics of a checkpoint on a dataset",
        description="Evaluate a checkpoint (ours, or an official torchvision RetinaNet file, whose labels are COCO "
        "category ids) on the validation split: prints the 12 COCO metrics as pycocotools does and a per-class table; "
        "writes eval.json, detections.json (COCO results format) and pr_curves.png. Only the evaluated split is read: "
        "no training split is needed, and --data may be a COCO val JSON alone (instances_val2017.json). Runs under torchrun too.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help=WEIGHTS_HELP)
    add_data_options(p, from_config=True, data_help="VOCdevkit root, flat images+XML folder, COCO annotation JSON, or YOLO data.yaml "
                     "(default: the dataset the checkpoint was trained on, with its split settings, said on stderr: the "
                     "bracketed defaults of the options below then give way to the checkpoint's; needed for a torchvision weights file)",
                     classes_help='class map JSON {"name": id, ...} to read the dataset with (default: the checkpoint\'s, so '
                     "the dataset's ids are the model's; discovered from the annotations for a torchvision weights file)")
    p.add_argument("--split", help="split to evaluate (overrides --val-split)")
    p.add_argument("--out", default="runs/eval", metavar="DIR", help="output folder [runs/eval]")
    p.add_argument("--voc", action="store_true", help="also the VOC protocol: AP50 per class, 11-point and all-point mAP")
    p.add_argument("--batch-size", type=positive_int, default=2, help="images per batch and process; when tiling: tiles per batch [2]")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data loading processes [2]")
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} [auto]")
    add_amp_options(p, "auto")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help=CHANNELS_LAST_HELP)
    add_input_size_options(p)
    p.add_argument("--score-thresh", type=fraction, help="keep detections scoring above this; one equal to it is dropped (default: the checkpoint's, 0.05)")
    add_cap_options(p, "detections kept per image (per tile with --tile), best first; the summary counts the images (tiles) "
                    "that reached it (COCO's AR100 and AP score each image's best 100 per class)")
    p.add_argument("--coco-backend", choices=["pycocotools", "faster_coco_eval"], default="pycocotools",
                   help="COCOeval implementation: pycocotools (reference) or faster_coco_eval (faster, equal to ~1e-16) [pycocotools]")
    add_tile_options(p)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    check_output_path(args.out, folder=True)
    # one evaluation writes a folder at a time (rank 0 writes it; torchrun stops the others if it cannot)
    with hold_folder(args.out, "retinanet eval") if launch_rank() == 0 else contextlib.nullcontext():
        return _eval(args)


def weights_config(weights: str, once: ReadOnce | None = None) -> dict | None:
    """The configs ``weights`` stores (``stored_config``, read through ``once``); None for a torchvision
    file (a name such as ``coco`` included: not fetched here)."""
    check_weights_given(weights)
    return None if str(weights).lower() in DETECTOR_URLS else stored_config(weights, once)


# what names the dataset a run was trained on (its split settings included): eval without --data reads them
# from the checkpoint, but for those given on its command line
TRAINED_DATASET = ("root", "format", "years", "val_split", "val_fraction", "split_seed", "exif", "max_image_pixels",
                   "synthetic_train", "synthetic_val", "synthetic_size")


def trained_dataset(weights: str, data_cfg: DataConfig, given: set[str],
                    stored: dict | None) -> tuple[DataConfig, str]:
    """``data_cfg`` with the dataset ``weights`` was trained on (its ``TRAINED_DATASET`` settings
    but those ``given`` on the command line), and a line that says which. ``stored``: the configs
    ``weights`` stores (``weights_config``). Raises ``RetinaNetError`` for weights that record no
    dataset (a torchvision file) and for a dataset no longer there."""
    if not stored or not stored.get("data"):
        raise RetinaNetError(f"--data is needed: {weights} records no dataset (a torchvision weights file); "
                             "--data names the one to evaluate on")
    trained = stored["data"]
    taken = {k: trained[k] for k in TRAINED_DATASET if k in trained and k not in given}
    data_cfg = dataclasses.replace(data_cfg, **{k: tuple(v) if k == "years" else v for k, v in taken.items()})
    root = data_cfg.root
    if root is not None and not Path(root).exists():
        raise RetinaNetError(f"{weights} was trained on {root}, which is not there now: give --data with where that "
                             "dataset is now (or another to evaluate on)")
    what = (f"the embedded synthetic dataset ({data_cfg.synthetic_train}/{data_cfg.synthetic_val} images of "
            f"{data_cfg.synthetic_size} px)" if root is None else root)
    return data_cfg, f"no --data: evaluating on the dataset {Path(weights).name} was trained on, {what}, split {data_cfg.val_split!r}"


def _eval(args: argparse.Namespace) -> int:
    given = given_options(args, ("data",))["data"]  # the dataset options given (the others are absent from args)
    val_split = given.get("val_split")
    if args.split and val_split not in (None, args.split):
        raise RetinaNetError(f"--split {args.split} and --val-split {val_split} both name the split to evaluate: give one")
    data_cfg = data_config_from_args(args, **({"val_split": args.split} if args.split else {}))
    tiling = tile_options_from_args(args, args.batch_size)  # an option combination refused before the weights are read
    once = ReadOnce()  # the checkpoint is read here, its weights loaded from that read (run_eval)
    try:
        stored = weights_config(args.weights, once)
        if getattr(args, "data", None) is None:  # the dataset the checkpoint was trained on, not a default one
            data_cfg, note = trained_dataset(args.weights, data_cfg, set(given) | ({"val_split"} if args.split else set()),
                                             stored)
            if not args.quiet and launch_local_rank() == 0:
                print(f"retinanet eval: {note}", file=sys.stderr)
    except RetinaNetError as err:
        err.every_rank = True  # under torchrun: said once per machine
        raise
    crop = trained_crop(stored)  # a --crop model's input size is its crop side, unless --min-size changes it
    tiling, tile_note = as_trained_tiling(crop, tiling, args.min_size or crop, args.batch_size)
    if tile_note and launch_local_rank() == 0:  # said even with --quiet: it decides what is measured
        print(f"retinanet eval: {tile_note}", file=sys.stderr)
    sizes = {"min_size": args.min_size, "max_size": args.max_size, "score_thresh": args.score_thresh,
             "detections_per_img": args.max_dets, "topk_candidates": args.topk_candidates}
    opts = EvalOptions(
        weights=args.weights, out=args.out, voc=args.voc, batch_size=args.batch_size, workers=args.workers,
        device=args.device, amp=args.amp, channels_last=args.channels_last, progress=not args.quiet, backend=args.coco_backend,
        model_overrides={k: v for k, v in sizes.items() if v is not None}, tile=tiling,
    )
    memory = fix_mmap_threshold() if opts.tile is not None else None  # the process's allocator, said below
    try:
        run = run_eval(data_cfg, opts, once)
        main_rank = is_main_process()  # before cleanup(): afterwards every process looks like rank 0
    finally:
        cleanup()
    if not main_rank:
        return 0
    way_out = ("; without --classes the dataset is read with the checkpoint's class map" if "classes" in given else
               " (e.g. a COCO model on VOC data: class names and ids differ)")
    for problem in run.warnings:
        print(f"retinanet eval: warning: {problem}; AP of those classes is meaningless{way_out}", file=sys.stderr)
    r = run.result
    print(r.summary_text, r.table(), sep="\n\n")
    if r.voc:
        print(f"\nVOC AP50 (continuous IoU): mAP {r.voc['mAP']:.4f} (all-point), {r.voc['mAP_07']:.4f} (11-point VOC2007)")
    print(f"\n{r.num_images} images, {len(r.detections)} detections: AP {r.metrics['AP']:.4f}, "
          f"AP50 {r.metrics['AP50']:.4f}; results in {args.out} (eval.json, detections.json, pr_curves.png)")
    if r.skipped:
        print(f"warning: {len(r.skipped)} image(s) could not be decoded and are not in these numbers (--skip-bad): "
              + "; ".join(r.skipped[:5]) + (f" (eval.json lists all {len(r.skipped)})" if len(r.skipped) > 5 else ""))
    where = "tile(s)" if run.tiling else "image(s)"
    if r.at_cap:
        print(f"warning: {r.at_cap} {where} reached --max-dets {r.max_dets}: detections beyond it were cut "
              f"(scoring at most {r.at_cap_score:.3g}; COCO scores each image's best 100 per class; the VOC AP and the PR "
              "curves change with the cut); give a larger --max-dets to keep them")
    if r.over_coco_max_dets[0]:
        print(f"warning: {coco_max_dets_note(*r.over_coco_max_dets)}")
    if r.at_topk:
        print(f"warning: {r.at_topk} {where} stayed below --max-dets {r.max_dets} while an FPN level had more candidates "
              f"above the score threshold than the {r.topk_candidates} it keeps for NMS (topk_candidates): those left out "
              f"scored at most {r.at_topk_score:.3g}; give a larger --topk-candidates to keep them")
    print(f"precision: {run.precision}")
    if run.tiling:
        print(f"tiling: {run.tiling}")
    if memory:
        print(memory)
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="detect objects in images and draw them",
        description="Detect objects in image files, folders or glob patterns. Writes OUT/images/ (drawn detections), "
        "OUT/predictions.json (every detection, original pixels, xyxy; each image with its output name and files), with --voc-xml OUT/xml/ (VOC annotations) and with "
        "--save-txt OUT/labels/ (YOLO labels) for a labelling tool. Photos are read as displayed (EXIF orientation applied; "
        "--exif ignore: the stored pixels). A file that cannot be read is reported and skipped.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder or glob pattern (quote it)")
    p.add_argument("--weights", required=True, metavar="CKPT", help=WEIGHTS_HELP)
    p.add_argument("--out", default="runs/predict", metavar="DIR", help="output folder [runs/predict]")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders (and ** in patterns)")
    p.add_argument("--score-thresh", type=fraction, default=0.3, help="keep detections scoring above this; one equal to it is dropped [0.3]")
    p.add_argument("--classes-filter", action="append", metavar="NAMES", help="keep only these classes (comma-separated, repeatable)")
    add_cap_options(p, "at most this many detections per image, best first; the summary counts the images that reached it")
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} [auto]")
    add_input_size_options(p)
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per batch; when tiling: tiles per batch [4]")
    p.add_argument("--workers", type=non_negative_int, default=2, help="decoding processes [2]")
    p.add_argument("--voc-xml", action="store_true", help="also write one VOC XML annotation per image")
    p.add_argument("--save-txt", action="store_true", help="also write YOLO labels per image (OUT/labels/, class = our id - 1, "
                   "normalised cx cy w h) and their class names (OUT/data.yaml)")
    p.add_argument("--save-conf", action="store_true", help="with --save-txt: append each detection's score to its line")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help=CHANNELS_LAST_HELP)
    add_amp_options(p, "auto")
    d = p.add_argument_group("drawn images (OUT/images/: a JPEG or PNG keeps its format, other files are written as PNG)")
    d.add_argument("--no-draw", action="store_true", help="do not write drawn images")
    d.add_argument("--line-width", type=positive_int, metavar="PX", help="box lines this wide (default: by the image, "
                   "min(width, height)/250, but at most a tenth of each box's short side, at least 1 px)")
    d.add_argument("--hide-labels", action="store_true", help="boxes only, no \"name score\" labels (by default a label, its "
                   "font at most a third of the median box height, is drawn where it fits: over no other label and at most "
                   "a quarter of any box, half where only a few conflict; the summary counts the boxes left without one)")
    d.add_argument("--hide-conf", action="store_true", help="labels with the class name only, no score")
    add_tile_options(p)
    add_image_options(p.add_argument_group("image files"), annotated=False)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    check_output_path(args.out, folder=True)
    files = find_images(args.inputs, recursive=args.recursive)  # fail before loading the model
    if args.save_conf and not args.save_txt:
        raise RetinaNetError("--save-conf adds scores to the YOLO labels of --save-txt: give --save-txt too")
    drawing = [o for o, given in (("--line-width", args.line_width is not None), ("--hide-labels", args.hide_labels),
                                  ("--hide-conf", args.hide_conf)) if given]
    if args.no_draw and drawing:
        raise RetinaNetError(f"{', '.join(drawing)}: style(s) the drawn images, which --no-draw turns off; give one or the other")
    with hold_folder(args.out, "retinanet predict"):  # one predict writes a folder at a time
        return _predict(args, files)


def _predict(args: argparse.Namespace, files) -> int:
    sizes = {"min_size": args.min_size, "max_size": args.max_size, "topk_candidates": args.topk_candidates}
    pixels = {"max_image_pixels": args.max_image_pixels} if args.max_image_pixels else {}
    tiling = tile_options_from_args(args, args.batch_size)  # an option combination refused before the weights load
    detector = Detector.load(args.weights, local_device(args.device), channels_last=args.channels_last, amp=args.amp, exif=args.exif,
                             **pixels, **{k: v for k, v in sizes.items() if v})
    classes = tuple(n.strip() for group in args.classes_filter or () for n in group.split(",") if n.strip())
    tiling, note = as_trained_tiling(detector.trained_crop, tiling, detector.model.config.min_size, args.batch_size)
    if note:  # said even with --quiet: it decides what the model sees
        print(f"retinanet predict: {note}", file=sys.stderr)
    tile = detector.tile_options(False if tiling is None else tiling)
    opts = PredictOptions(
        out=args.out, score_thresh=args.score_thresh, classes=classes, max_dets=args.max_dets, batch_size=args.batch_size,
        workers=args.workers, draw=not args.no_draw, line_width=args.line_width, draw_labels=not args.hide_labels,
        draw_conf=not args.hide_conf, voc_xml=args.voc_xml, yolo_txt=args.save_txt,
        save_conf=args.save_conf, progress=not args.quiet, tile=tile,
    )
    memory = fix_mmap_threshold() if tile is not None else None  # the process's allocator, said below
    summary = predict(detector, files, opts)
    print(summary.text())
    if tile is not None:
        print(f"tiling: {tile.describe()}")
        print(memory)
    print(f"precision: {detector.precision.describe()}")
    return 1 if summary.num_images == 0 else 0


# --- export (retinanet.engine.export.onnx_export) -------------------------------------------------------------


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export the whole detector to ONNX and verify it with onnxruntime",
        description="Export pre-processing, network, anchors, decoding and NMS to one ONNX file, then check "
        "onnxruntime against PyTorch on sample images. Input: images [B,3,H,W] already resized to the "
        "model's input size (a model trained with --crop PX: native-resolution tiles of PX, said and in the metadata); outputs: boxes [B,K,4], scores [B,K], labels [B,K], num_detections [B].",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help=WEIGHTS_HELP)
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=arg_type(at_least(DEFAULT_OPSET), "opset"), default=DEFAULT_OPSET, help=f"ONNX opset, {DEFAULT_OPSET} or newer [{DEFAULT_OPSET}]")
    p.add_argument("--image-size", type=positive_int, nargs="+", default=[], metavar="N", help="example input size, S or H W; the only one accepted with --static [model min_size square]")
    p.add_argument("--batch-size", type=positive_int, default=1, help="example batch size; the only one accepted with --static [1]")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dynamic", dest="dynamic", action="store_true", default=True, help="dynamic batch size, height and width (default)")
    mode.add_argument("--static", dest="dynamic", action="store_false", help="fixed input shape: --batch-size x 3 x --image-size")
    p.add_argument("--input-dtype", choices=["uint8", "float32"], default="uint8", help="graph input: uint8 0..255 or float32 0..1 RGB [uint8]")
    p.add_argument("--score-thresh", type=fraction, help="score threshold baked into the graph: it keeps detections scoring above it [the checkpoint's]")
    p.add_argument("--max-dets", type=field_type("detections_per_img"), metavar="N",
                   help="K, the detections per image the graph has room for (its outputs are [B,K,...]); the check says "
                   "when an image fills it [the checkpoint's detections_per_img, 300 by default]")
    p.add_argument("--sample", nargs="+", default=[], metavar="IMAGE", help="images to verify on (default: random images)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the onnxruntime vs PyTorch check")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if len(args.image_size) > 2:
        raise RetinaNetError(f"--image-size takes S or H W, not {len(args.image_size)} numbers")
    check_output_path(args.out, folder=False)
    options = ExportOptions(
        opset=args.opset, image_size=tuple(args.image_size), batch_size=args.batch_size, dynamic=args.dynamic,
        input_dtype=args.input_dtype, score_thresh=args.score_thresh, max_dets=args.max_dets, verify=args.verify,
        samples=tuple(args.sample),
    )
    once = ReadOnce()  # the checkpoint is read here for its crop, its weights loaded from that read
    crop = trained_crop(weights_config(args.weights, once))
    if crop:  # resized whole to its crop side, a large image's objects vanish: said before the minute of export
        print(f"retinanet export: {crop_note(crop)}", file=sys.stderr)
    check = ", then the onnxruntime check" if args.verify else ""
    print(f"exporting {args.weights} to {args.out} (torch.export{check}: about half a minute for a small model on a CPU)",
          flush=True)
    path, report, seconds = export_checkpoint(args.weights, args.out, options, once)
    print(f"exported {path} in {seconds:.1f} s")
    if report is not None:
        print(report.format())
    return 0


# --- demo (retinanet.cli.demo) --------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """``retinanet demo``: runs the real commands through ``main``."""
    return run_demo(demo_options(args), run_command=main)


# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="retinanet",
        description="Train, evaluate, run and export RetinaNet object detectors on VOC and COCO data.",
        epilog="Start with 'retinanet demo' (synthetic data, no download, runs on a CPU); every command explains its "
        "options with 'retinanet COMMAND --help'; README.md has the whole guide.",
    )
    parser.add_argument("--version", action="version", version=f"retinanet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_make_synthetic(sub)
    _add_check_data(sub)
    add_train_parser(sub).set_defaults(func=cmd_train)
    _add_eval(sub)
    _add_predict(sub)
    _add_export(sub)
    add_demo_parser(sub).set_defaults(func=cmd_demo)
    return parser


@contextlib.contextmanager
def plain_warnings(command: str):
    """Inside: the package's own warnings print as ``retinanet COMMAND: warning: MESSAGE`` (not
    Python's ``file:line: UserWarning`` and the source line); others as Python shows them
    (``errors.PlainWarnings``; the loader workers started inside print them alike)."""
    python_show = warnings.showwarning
    warnings.showwarning = PlainWarnings(command, python_show)
    try:
        yield
    finally:
        warnings.showwarning = python_show


def console_safe(stream) -> None:
    """Make ``stream`` (stdout, stderr) print what its encoding cannot hold as ``\\xe9``-style escapes
    instead of raising UnicodeEncodeError: Windows consoles and redirected output use the locale's
    code page (cp1252, ...), which has no ``猫``. The encoding is kept; a UTF-8 stream, or one that
    cannot be reconfigured (a test's StringIO), is left alone."""
    encoding = getattr(stream, "encoding", None)
    if encoding is None or not hasattr(stream, "reconfigure") or codecs.lookup(encoding).name == "utf-8":
        return
    stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    console_safe(sys.stdout)
    console_safe(sys.stderr)
    args = build_parser().parse_args(argv)
    if starting_worker():  # the run goes on in the process that started this one: said, not run twice
        print(f"retinanet {args.command}: not run again in a starting loader worker: {MAIN_GUARD_HINT}", file=sys.stderr)
        return 2
    try:
        with plain_warnings(args.command):
            return int(args.func(args) or 0)
    except RetinaNetError as err:
        # under torchrun each machine's first process speaks for an error every process there met alike
        # (its files, its options): printed once per machine, not once per process
        if launch_local_rank() == 0 or not getattr(err, "every_rank", False):
            print(f"retinanet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if launch_local_rank() == 0:  # torchrun passes Ctrl-C to every process: said once per machine
            print(f"retinanet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # its output's reader left (`| head`): a command that prints as it goes ends there
        drop_output(sys.stdout)  # (train does not: its log goes on to train.log alone)
        with contextlib.suppress(OSError):
            print(f"retinanet {args.command}: stopped: its output was closed by the command reading it", file=sys.stderr)
        return 141
