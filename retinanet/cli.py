"""Command-line interface: ``retinanet SUBCOMMAND ...`` (also ``python -m retinanet``).

One short function per sub-command: it turns parsed options into config objects and calls the
engine. Library code raises ``RetinaNetError``; here it becomes one clear line on stderr and exit
status 2 (1 for a dataset check that found problems, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from retinanet.errors import RetinaNetError


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong option is one line naming the command, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_data_options(p: argparse.ArgumentParser, *, from_config: bool = False, augment: bool = False) -> None:
    """Dataset options shared by train, eval and check-data (``augment``: the training augmentation too).

    ``from_config`` (train): an option not given is absent from the parsed ``args`` (its value comes
    from the config file, else ``DataConfig``'s default, shown in brackets) and each switch also has
    a ``--no-`` form to turn off what a config file turned on.
    """
    from retinanet.config import DataConfig

    d = DataConfig()

    def default(value):
        return argparse.SUPPRESS if from_config else value

    switch = {"action": argparse.BooleanOptionalAction, "default": argparse.SUPPRESS} if from_config else {"action": "store_true"}
    g = p.add_argument_group("dataset")
    g.add_argument("--data", metavar="ROOT", default=default(None), help="VOCdevkit root, flat images+XML folder, COCO annotation JSON, or YOLO data.yaml (default: the embedded synthetic dataset, written once under ~/.cache/retinanet/synthetic/ or $RETINANET_CACHE/synthetic/)")
    g.add_argument("--format", choices=["voc", "voc-flat", "coco", "yolo"], default=default(None), help="force the dataset kind instead of detecting it")
    g.add_argument("--year", dest="years", action="append", metavar="YEAR", default=default(None), help="VOC year, repeatable (--year 2007 --year 2012); default: every VOC20xx folder found")
    g.add_argument("--train-split", default=default(d.train_split), help=f"training split (VOC ImageSets/Main name, COCO split or YOLO data.yaml key) [{d.train_split}]")
    g.add_argument("--val-split", default=default(d.val_split), help=f"validation split [{d.val_split}]; COCO: or the val JSON; flat layout: or a .txt list of val images")
    g.add_argument("--classes", metavar="JSON", default=default(None), help='class map JSON {"name": id, ...}; default: discovered from the annotations')
    g.add_argument("--val-fraction", type=float, default=default(d.val_fraction), help=f"flat layout: share of images held out for validation [{d.val_fraction}]")
    g.add_argument("--split-seed", type=int, default=default(d.split_seed), help=f"flat layout: seed of the deterministic split [{d.split_seed}]")
    g.add_argument("--skip-bad", **switch, help="skip bad items (each reported) instead of stopping")
    g.add_argument("--train-difficult", **switch, help="train on VOC 'difficult' / COCO crowd objects too (default: ignore regions)")
    if not augment:
        return
    a = p.add_argument_group("augmentation (training only)")
    a.add_argument("--train-sizes", type=int, nargs="+", metavar="PX", default=default(()), help="multi-scale training: random short side from these (default: the model's min size)")
    a.add_argument("--hflip-prob", type=float, default=default(d.hflip_prob), help=f"horizontal flip probability [{d.hflip_prob}]")
    a.add_argument("--photometric", **switch, help="random photometric distortion (brightness, contrast, saturation, hue)")
    a.add_argument("--iou-crop", **switch, help="random IoU crop (SSD-style)")
    if from_config:
        a.add_argument("--aspect-grouping", **switch, help="batch portrait and landscape images apart [on]")
    else:
        a.add_argument("--no-aspect-grouping", dest="aspect_grouping", action="store_false", help="do not batch portrait and landscape images apart")


# --- make-synthetic / check-data (retinanet.data) -------------------------------------------------


def _add_make_synthetic(sub) -> None:
    p = sub.add_parser("make-synthetic", help="write the embedded synthetic VOC-format dataset")
    p.add_argument("out", metavar="OUT", help="output folder (VOCdevkit/VOC2012 layout + classes.json)")
    p.add_argument("--num-train", type=int, default=400, help="training images [400]")
    p.add_argument("--num-val", type=int, default=100, help="validation images [100]")
    p.add_argument("--image-size", type=int, default=256, help="side of the square images, pixels [256]")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes [0]")
    p.set_defaults(func=cmd_make_synthetic)


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from retinanet.data import make_synthetic

    s = make_synthetic(args.out, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed)
    print(f"wrote {s['train']} train + {s['val']} val images ({args.image_size}x{args.image_size}), {s['objects']} objects "
          f"of {s['classes']} classes to {args.out} (VOCdevkit/VOC2012, class map {args.out}/classes.json)")
    return 0


def _add_check_data(sub) -> None:
    p = sub.add_parser("check-data", help="read a dataset as training would and report every problem")
    add_data_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_check_data)


def cmd_check_data(args: argparse.Namespace) -> int:
    from retinanet.data import check_dataset

    report = check_dataset(data_config_from_args(args), progress=not args.quiet)
    print(report.summary())
    return 0 if report.ok else 1


_DATA_ARGS = {"root": "data", "format": "format", "years": "years", "train_split": "train_split", "val_split": "val_split",
              "classes": "classes", "val_fraction": "val_fraction", "split_seed": "split_seed", "skip_bad": "skip_bad",
              "train_difficult": "train_difficult", "train_sizes": "train_sizes", "hflip_prob": "hflip_prob",
              "photometric": "photometric", "iou_crop": "iou_crop", "aspect_grouping": "aspect_grouping", "workers": "workers",
              "synthetic_train": "synthetic_train", "synthetic_val": "synthetic_val", "synthetic_size": "synthetic_size"}


def data_config_from_args(args: argparse.Namespace, base=None, **overrides):
    """``base`` (default ``DataConfig()``) with the data options present in ``args`` (``overrides`` win)."""
    import dataclasses

    from retinanet.config import DataConfig

    given = vars(args)
    values = {field: given[name] for field, name in _DATA_ARGS.items() if name in given}
    for field in ("years", "train_sizes"):
        if field in values:
            values[field] = tuple(values[field] or ())
    return dataclasses.replace(base if base is not None else DataConfig(), **{**values, **overrides})


# --- train (retinanet.engine.train) ---------------------------------------------------------------


def _add_train(sub) -> None:
    from retinanet.config import DataConfig, ModelConfig, TrainConfig, recipe_names

    m0, d0, t0 = ModelConfig(), DataConfig(), TrainConfig()
    p = sub.add_parser(
        "train", help="train a detector (CPU, one GPU, or many with torchrun)",
        description="Train a RetinaNet. Every option comes from, lowest first: the built-in default (in brackets), the "
        f"config file (--config FILE or a shipped recipe: {', '.join(recipe_names())}; without --config and --data: "
        "the quick_synthetic recipe; with --resume and no --config: the checkpoint's config), the options given here. "
        "The resolved config is written to RUN_DIR/config.yaml (train again with --config RUN_DIR/config.yaml). "
        "Run with 'torchrun --nproc_per_node=N -m retinanet train ...' for DDP (NCCL on GPUs, gloo on CPU).",
    )
    add_data_options(p, from_config=True, augment=True)
    S = argparse.SUPPRESS  # only options the user gives override --config
    s = p.add_argument_group("embedded synthetic dataset (used when no --data is given)")
    s.add_argument("--synthetic-train", type=int, default=S, metavar="N", help=f"training images [{d0.synthetic_train}]")
    s.add_argument("--synthetic-val", type=int, default=S, metavar="N", help=f"validation images [{d0.synthetic_val}]")
    s.add_argument("--synthetic-size", type=int, default=S, metavar="PX", help=f"side of the square images [{d0.synthetic_size}]")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default=S, help=f"resnet18_fpn, resnet34_fpn, resnet50_fpn, resnet50_fpn_v2, ... [{m0.arch}]")
    m.add_argument("--min-size", type=int, default=S, metavar="PX", help=f"short side of the network input [{m0.min_size}]")
    m.add_argument("--max-size", type=int, default=S, metavar="PX", help=f"cap on the long side [{m0.max_size}]")
    m.add_argument("--norm", choices=["frozen_bn", "bn"], default=S, help=f"backbone BatchNorm: frozen (pretrained start) or trained [{m0.norm}]")
    m.add_argument("--trainable-backbone-layers", type=int, default=S, metavar="N", help=f"ResNet stages trained, 0..5 [{m0.trainable_backbone_layers}]")
    m.add_argument("--fpn-channels", type=int, default=S, metavar="C", help=f"FPN and head width (256 to load torchvision weights) [{m0.fpn_channels}]")
    m.add_argument("--head-convs", type=int, default=S, metavar="N", help=f"conv layers per head branch (4 to load torchvision weights) [{m0.head_convs}]")
    t = p.add_argument_group("training")
    t.add_argument("--config", metavar="FILE", default=S, help="YAML/JSON with model:, data:, train: sections, or a shipped recipe name")
    t.add_argument("--weights", default=S, metavar="FILE", help="start from these weights: a torchvision RetinaNet state_dict or our checkpoint (a different class count re-initialises the classification layer)")
    t.add_argument("--resume", default=S, metavar="RUN_DIR_OR_CKPT", help="continue a run exactly from RUN_DIR/last.pt or a checkpoint")
    t.add_argument("--out", default=S, metavar="RUN_DIR", help=f"run directory for checkpoints, logs and plots [{t0.out}]")
    t.add_argument("--epochs", type=int, default=S, help=f"[{t0.epochs}]")
    t.add_argument("--batch-size", type=int, default=S, help=f"images per step and process [{t0.batch_size}]")
    t.add_argument("--workers", type=int, default=S, help=f"data loading processes per training process [{d0.workers}]")
    t.add_argument("--optimizer", choices=["sgd", "adamw"], default=S, help=f"[{t0.optimizer}]")
    t.add_argument("--lr", type=float, default=S, help=f"peak learning rate (for --batch-size x processes images) [{t0.lr}]")
    t.add_argument("--momentum", type=float, default=S, help=f"SGD momentum [{t0.momentum}]")
    t.add_argument("--weight-decay", type=float, default=S, help=f"[{t0.weight_decay}]")
    t.add_argument("--scheduler", choices=["multistep", "cosine"], default=S, help=f"learning rate schedule after warmup [{t0.scheduler}]")
    t.add_argument("--warmup-iters", type=int, default=S, metavar="N", help=f"linear warmup steps [{t0.warmup_iters}]")
    t.add_argument("--lr-steps", type=int, nargs="+", default=S, metavar="EPOCH", help=f"multistep: epochs where the lr is multiplied by --lr-gamma [{' '.join(map(str, t0.lr_steps))}]")
    t.add_argument("--lr-gamma", type=float, default=S, help=f"multistep factor [{t0.lr_gamma}]")
    t.add_argument("--clip-grad", dest="clip_grad_norm", type=float, default=S, metavar="NORM", help="clip the gradient norm to this [off]")
    t.add_argument("--amp", action=argparse.BooleanOptionalAction, default=S, help="mixed precision (fp16 + grad scaling on GPUs, bf16 on CPU) [off]")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=S, help="run the model in channels_last (NHWC) memory layout: the same results, usually faster (BENCHMARKS.md) [on]")
    t.add_argument("--ema", action=argparse.BooleanOptionalAction, default=S, help="keep an exponential moving average of the weights; it is evaluated and saved as 'ema' [off]")
    t.add_argument("--ema-decay", type=float, default=S, help=f"EMA decay, ramped up over the first steps [{t0.ema_decay}]")
    t.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=S, help="SyncBatchNorm across processes (DDP with --norm bn) [off]")
    t.add_argument("--eval-every", type=int, default=S, metavar="N", help=f"evaluate every N epochs and after the last; best.pt only changes then [{t0.eval_every}]")
    t.add_argument("--print-every", type=int, default=S, metavar="N", help=f"a progress line every N steps in train.log (on stdout when it is not a terminal) [{t0.print_every}]")
    t.add_argument("--seed", type=int, default=S, help=f"[{t0.seed}]")
    t.add_argument("--device", default=S, help=f"auto, cpu, cuda, cuda:1 ... [{t0.device}]")
    t.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=S, help="also log to RUN_DIR/tensorboard (needs: pip install 'retinanet[tensorboard]') [off]")
    t.add_argument("--quiet", action="store_true", help="no progress bars or lines on the terminal (train.log is still written)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from retinanet.engine.train import configs_from, summary_text, train

    model_cfg, data_cfg, train_cfg = configs_from(args, data_config_from_args)
    summary = train(model_cfg, data_cfg, train_cfg, progress=not args.quiet)
    if summary["rank"] == 0:  # the process group is gone by now: the rank is in the summary
        print(summary_text(summary))
    return {"finished": 0, "SIGINT": 130, "SIGTERM": 143}.get(summary["stopped"], 1)


# --- eval / predict (retinanet.engine.evaluate, retinanet.engine.predict) -------------------------


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="COCO (and VOC) metrics of a checkpoint on a dataset",
        description="Evaluate a checkpoint (ours, or an official torchvision RetinaNet file, whose labels are COCO "
        "category ids) on the validation split: prints the 12 COCO metrics as pycocotools does and a per-class table; "
        "writes eval.json, detections.json (COCO results format) and pr_curves.png. Only the evaluated split is read: "
        "no training split is needed, and --data may be a COCO val JSON alone (instances_val2017.json). Runs under torchrun too.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="our checkpoint or a torchvision RetinaNet state_dict")
    add_data_options(p)
    p.add_argument("--split", help="split to evaluate (overrides --val-split)")
    p.add_argument("--out", default="runs/eval", metavar="DIR", help="output folder [runs/eval]")
    p.add_argument("--voc", action="store_true", help="also the VOC protocol: AP50 per class, 11-point and all-point mAP")
    p.add_argument("--batch-size", type=int, default=2, help="images per batch and process [2]")
    p.add_argument("--workers", type=int, default=2, help="data loading processes [2]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... [auto]")
    p.add_argument("--amp", action="store_true", help="mixed precision inference (bf16; fp16 on GPUs without bf16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="run the model in channels_last (NHWC) memory layout: the same detections, usually faster [on]")
    p.add_argument("--min-size", type=int, help="short side of the network input (default: the checkpoint's)")
    p.add_argument("--max-size", type=int, help="cap on the long side (default: the checkpoint's)")
    p.add_argument("--score-thresh", type=float, help="drop detections below this score (default: the checkpoint's, 0.05)")
    p.add_argument("--coco-backend", choices=["pycocotools", "faster_coco_eval"], default="pycocotools",
                   help="COCOeval implementation: pycocotools (reference) or faster_coco_eval (faster, equal to ~1e-16) [pycocotools]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from retinanet.config import DataConfig
    from retinanet.engine.distributed import cleanup, is_main_process
    from retinanet.engine.evaluate import EvalOptions, run_eval

    data_cfg = DataConfig(
        root=args.data, format=args.format, years=tuple(args.years or ()), train_split=args.train_split,
        val_split=args.split or args.val_split, classes=args.classes, val_fraction=args.val_fraction,
        split_seed=args.split_seed, skip_bad=args.skip_bad, workers=args.workers,
    )
    sizes = {"min_size": args.min_size, "max_size": args.max_size, "score_thresh": args.score_thresh}
    opts = EvalOptions(
        weights=args.weights, out=args.out, voc=args.voc, batch_size=args.batch_size, workers=args.workers,
        device=args.device, amp=args.amp, channels_last=args.channels_last, progress=not args.quiet, backend=args.coco_backend,
        model_overrides={k: v for k, v in sizes.items() if v is not None},
    )
    try:
        run = run_eval(data_cfg, opts)
        main_rank = is_main_process()  # before cleanup(): afterwards every process looks like rank 0
    finally:
        cleanup()
    if not main_rank:
        return 0
    for problem in run.warnings:
        print(f"retinanet eval: warning: {problem}; AP of those classes is meaningless "
              "(e.g. a COCO model on VOC data: class names and ids differ)", file=sys.stderr)
    r = run.result
    print(r.summary_text, r.table(), sep="\n\n")
    if r.voc:
        print(f"\nVOC AP50 (continuous IoU): mAP {100 * r.voc['mAP']:.2f} (all-point), {100 * r.voc['mAP_07']:.2f} (11-point VOC2007)")
    print(f"\n{r.num_images} images, {len(r.detections)} detections: AP {100 * r.metrics['AP']:.2f}, "
          f"AP50 {100 * r.metrics['AP50']:.2f}; results in {args.out} (eval.json, detections.json, pr_curves.png)")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="detect objects in images and draw them",
        description="Detect objects in image files, folders or glob patterns. Writes OUT/images/ (drawn detections), "
        "OUT/predictions.json (every detection, original pixels, xyxy) and with --voc-xml OUT/xml/ (VOC annotations for "
        "a labelling tool). A file that cannot be read is reported and skipped.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder or glob pattern (quote it)")
    p.add_argument("--weights", required=True, metavar="CKPT", help="our checkpoint or a torchvision RetinaNet state_dict")
    p.add_argument("--out", default="runs/predict", metavar="DIR", help="output folder [runs/predict]")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders (and ** in patterns)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="keep detections scoring at least this [0.3]")
    p.add_argument("--classes-filter", action="append", metavar="NAMES", help="keep only these classes (comma-separated, repeatable)")
    p.add_argument("--max-dets", type=int, default=100, help="at most this many detections per image [100]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... [auto]")
    p.add_argument("--min-size", type=int, help="short side of the network input (default: the checkpoint's)")
    p.add_argument("--max-size", type=int, help="cap on the long side (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch [4]")
    p.add_argument("--workers", type=int, default=2, help="decoding processes [2]")
    p.add_argument("--voc-xml", action="store_true", help="also write one VOC XML annotation per image")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="run the model in channels_last (NHWC) memory layout: the same detections, usually faster [on]")
    p.add_argument("--no-draw", action="store_true", help="do not write drawn images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from retinanet.engine.checkpoint import load_model
    from retinanet.engine.distributed import local_device
    from retinanet.engine.predict import PredictOptions, class_names_of, find_images, predict

    files = find_images(args.inputs, recursive=args.recursive)  # fail before loading the model
    device = local_device(args.device)
    sizes = {"min_size": args.min_size, "max_size": args.max_size}
    model, class_map = load_model(args.weights, device, channels_last=args.channels_last, score_thresh=args.score_thresh, **{k: v for k, v in sizes.items() if v})
    classes = tuple(n.strip() for group in args.classes_filter or () for n in group.split(",") if n.strip())
    opts = PredictOptions(
        out=args.out, score_thresh=args.score_thresh, classes=classes, max_dets=args.max_dets, batch_size=args.batch_size,
        workers=args.workers, draw=not args.no_draw, voc_xml=args.voc_xml, progress=not args.quiet,
    )
    summary = predict(model, files, class_names_of(class_map, model.config.num_classes), opts, device)
    print(summary.text())
    return 1 if summary.num_images == 0 else 0


# --- export (retinanet.engine.export) -------------------------------------------------------------


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export the whole detector to ONNX and verify it with onnxruntime",
        description="Export pre-processing, network, anchors, decoding and NMS to one ONNX file, then check "
        "onnxruntime against PyTorch on sample images. Input: images [B,3,H,W] already resized to the "
        "model's input size; outputs: boxes [B,K,4], scores [B,K], labels [B,K], num_detections [B].",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="our checkpoint or a torchvision RetinaNet state_dict")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset [18]")
    p.add_argument("--image-size", type=int, nargs="+", default=[], metavar="N", help="example input size, S or H W; the only one accepted with --static [model min_size square]")
    p.add_argument("--batch-size", type=int, default=1, help="example batch size; the only one accepted with --static [1]")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dynamic", dest="dynamic", action="store_true", default=True, help="dynamic batch size, height and width (default)")
    mode.add_argument("--static", dest="dynamic", action="store_false", help="fixed input shape: --batch-size x 3 x --image-size")
    p.add_argument("--input-dtype", choices=["uint8", "float32"], default="uint8", help="graph input: uint8 0..255 or float32 0..1 RGB [uint8]")
    p.add_argument("--score-thresh", type=float, help="score threshold baked into the graph [the checkpoint's]")
    p.add_argument("--sample", nargs="+", default=[], metavar="IMAGE", help="images to verify on (default: random images)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the onnxruntime vs PyTorch check")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from retinanet.engine.export import ExportOptions, export_checkpoint

    if len(args.image_size) > 2:
        raise RetinaNetError(f"--image-size takes S or H W, not {len(args.image_size)} numbers")
    options = ExportOptions(
        opset=args.opset, image_size=tuple(args.image_size), batch_size=args.batch_size, dynamic=args.dynamic,
        input_dtype=args.input_dtype, score_thresh=args.score_thresh, verify=args.verify, samples=tuple(args.sample),
    )
    path, report, seconds = export_checkpoint(args.weights, args.out, options)
    print(f"exported {path} in {seconds:.1f} s")
    if report is not None:
        print(report.format())
    return 0


# --- demo -----------------------------------------------------------------------------------------


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="synthetic data -> quick training -> eval -> predictions, on a CPU",
        usage="retinanet demo [options] [-- TRAIN_OPTIONS ...]",
        description="Generate the embedded synthetic dataset, train the shipped quick_synthetic recipe "
        "(retinanet train --config quick_synthetic --out DIR/train), evaluate its best checkpoint (retinanet eval, "
        "DIR/eval) and draw its detections on validation images (retinanet predict, DIR/predict), then print the "
        "results and where everything is. Stops at the first command that fails.",
        epilog="Options after '--' go to 'retinanet train' unchanged, e.g. "
        "'retinanet demo --epochs 2 -- --min-size 128 --max-size 128 --batch-size 4'.",
    )
    p.add_argument("--out", default="demo", metavar="DIR", help="output folder: DIR/train, DIR/eval, DIR/predict [demo]")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (default: the recipe's, auto)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    p.add_argument("--workers", type=int, help="data loading processes of every step (default: each command's)")
    p.add_argument("--synthetic-train", type=int, metavar="N", help="synthetic training images (default: the recipe's)")
    p.add_argument("--synthetic-val", type=int, metavar="N", help="synthetic validation images (default: the recipe's)")
    p.add_argument("--synthetic-size", type=int, metavar="PX", help="side of the synthetic images (default: the recipe's)")
    p.add_argument("--num-images", type=int, default=8, metavar="N", help="validation images to draw predictions on [8]")
    p.add_argument("train_options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from retinanet.demo import DemoOptions, run_demo

    extra = list(args.train_options)
    if extra and extra[0] != "--":
        raise RetinaNetError(f"unexpected argument {extra[0]!r}: training options go after '--'")
    opts = DemoOptions(
        out=args.out, device=args.device, epochs=args.epochs, workers=args.workers, synthetic_train=args.synthetic_train,
        synthetic_val=args.synthetic_val, synthetic_size=args.synthetic_size, num_images=args.num_images,
        train_options=tuple(extra[1:]),
    )
    return run_demo(opts)


# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="retinanet",
        description="Train, evaluate, run and export RetinaNet object detectors on VOC and COCO data.",
        epilog="Start with 'retinanet demo' (synthetic data, no download, runs on a CPU); every command explains its "
        "options with 'retinanet COMMAND --help'; README.md has the whole guide.",
    )
    from retinanet import __version__

    parser.add_argument("--version", action="version", version=f"retinanet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_make_synthetic, _add_check_data, _add_train, _add_eval, _add_predict, _add_export, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RetinaNetError as err:
        print(f"retinanet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"retinanet {args.command}: interrupted", file=sys.stderr)
        return 130
