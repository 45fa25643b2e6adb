"""Options shared by several commands, and parsed options -> config dicts.

``add_data_options`` declares the dataset options of train, eval and check-data; ``expand_home_options``
makes a ``~`` in any option the home folder, on every parse. ``given_options``
turns what argparse parsed into the ``{"model": {...}, "data": {...}, "train": {...}}`` dicts that
``retinanet.config.resolve_config`` takes: an option's destination is the config field of the
same name (``--data`` -> ``DataConfig.root``), and an option that was not given is absent
(train's options default to ``argparse.SUPPRESS``; elsewhere a ``None`` default means "not given").
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import retinanet.config as C
from retinanet.config import LIMITS, SECTIONS, DataConfig, expand_home, resolve_config
from retinanet.data.images import EXIF_POLICIES
from retinanet.engine.runtime.precision import AMP_MODES
from retinanet.errors import RetinaNetError
from retinanet.model.tiling import TileOptions, trained_tiling

OPTION_TO_FIELD = {"data": "root"}  # option destinations whose config field has another name

# help texts several sub-commands share, written once
WEIGHTS_HELP = ("our checkpoint, a torchvision RetinaNet state_dict (or a checkpoint of torchvision's detection reference "
                "scripts: its 'model' entry), or coco / coco-v2 (torchvision's COCO files, "
                "downloaded once, hash-checked; labels are COCO category ids)")
DEVICE_HELP = "auto, cpu, cuda, cuda:1 ..."
CHANNELS_LAST_HELP = "run the model in channels_last (NHWC) memory layout: the same detections, usually faster [on]"
QUIET_HELP = "no progress bar"


def add_input_size_options(p) -> None:
    """``--min-size``/``--max-size`` of a command that runs a checkpoint (default: its own)."""
    p.add_argument("--min-size", type=positive_int, help="short side of the network input (default: the checkpoint's)")
    p.add_argument("--max-size", type=positive_int, help="cap on the long side (default: the checkpoint's)")


def add_cap_options(p, max_dets_help: str, default=None) -> None:
    """``--max-dets N`` (``ModelConfig.detections_per_img``) and ``--topk-candidates N``
    (``ModelConfig.topk_candidates``) of train, eval and predict: the same caps, the same defaults
    (the checkpoint's; train: the config's), overridden for the command's run. ``default``:
    ``argparse.SUPPRESS`` for train (absent unless given), else None (the checkpoint's)."""
    m0 = C.ModelConfig()
    train = default == argparse.SUPPRESS

    def shown(field: str, value: int) -> str:
        return f"[{value}]" if train else f"[the checkpoint's {field}, {value} by default]"
    p.add_argument("--max-dets", dest="detections_per_img" if train else "max_dets",
                   type=field_type("detections_per_img"), default=default, metavar="N",
                   help=f"{max_dets_help} {shown('detections_per_img', m0.detections_per_img)}")
    p.add_argument("--topk-candidates", type=field_type("topk_candidates"), default=default, metavar="N",
                   help="candidates per FPN level kept for NMS, best first (raised to the cap the model runs with when that is "
                   "larger: " + ("--max-dets" if train else "the larger of --max-dets and the checkpoint's detections_per_img") + "); "
                   f"{'train.log counts' if train else 'the summary counts'} the images that stayed below --max-dets while "
                   f"a level had more candidates above the score threshold {shown('topk_candidates', m0.topk_candidates)}")


def add_amp_options(p, default: str) -> None:
    """``--amp [MODE]`` (alone: "on") and ``--no-amp`` (= ``--amp off``); ``default`` is shown in
    brackets (``argparse.SUPPRESS`` for train: the config decides, "auto" by default)."""
    shown = "auto" if default == argparse.SUPPRESS else default
    p.add_argument("--amp", nargs="?", const="on", choices=AMP_MODES, default=default, metavar="MODE",
                   help="mixed precision: auto (bf16 on GPUs that have it, else fp16 with gradient scaling; fp32 on CPUs, "
                   "where --amp bf16 is about 1.6x faster with AVX512-BF16/AMX: BENCHMARKS.md), on (bf16 on any CPU), "
                   f"bf16, fp16 (GPUs only), off; --amp alone = on [{shown}]")
    p.add_argument("--no-amp", dest="amp", action="store_const", const="off", default=default, help="= --amp off")


def add_data_options(p: argparse.ArgumentParser, *, from_config: bool = False, augment: bool = False,
                     data_help: str | None = None, classes_help: str | None = None) -> None:
    """Dataset options shared by train, eval and check-data (``augment``: train's own too,
    ``--train-difficult`` and the augmentation).

    ``data_help``: ``--data``'s help where its default differs (eval: the checkpoint's dataset);
    ``classes_help`` likewise for ``--classes`` (eval: the checkpoint's class map).
    ``from_config`` (train): an option not given is absent from the parsed ``args`` (its value comes
    from the config file, else ``DataConfig``'s default, shown in brackets) and each switch also has
    a ``--no-`` form to turn off what a config file turned on.
    """
    d = DataConfig()
    default = (lambda value: argparse.SUPPRESS) if from_config else (lambda value: value)
    switch = {"action": argparse.BooleanOptionalAction, "default": argparse.SUPPRESS} if from_config else {"action": "store_true"}
    g = p.add_argument_group("dataset")
    g.add_argument("--data", metavar="ROOT", default=default(None), help=data_help or "VOCdevkit root, flat images+XML folder, COCO annotation JSON, or YOLO data.yaml (default: the embedded synthetic dataset, written once under ~/.cache/retinanet/synthetic/ or $RETINANET_CACHE/synthetic/)")
    g.add_argument("--format", choices=["voc", "voc-flat", "coco", "yolo"], default=default(None), help="force the dataset kind instead of detecting it")
    g.add_argument("--year", dest="years", action="append", metavar="YEAR", default=default(None), help="VOC year, repeatable (--year 2007 --year 2012); default: every VOC20xx folder found")
    g.add_argument("--train-split", default=default(d.train_split), help=f"training split (VOC ImageSets/Main name, COCO split or YOLO data.yaml key) [{d.train_split}]")
    g.add_argument("--val-split", default=default(d.val_split), help=f"validation split [{d.val_split}]; COCO: or the val JSON; flat layout: or a .txt list of val images")
    g.add_argument("--classes", metavar="JSON", default=default(None), help=classes_help or 'class map JSON {"name": id, ...}; default: discovered from the annotations')
    g.add_argument("--val-fraction", type=field_type("val_fraction"), default=default(d.val_fraction), help=f"flat layout: share of images held out for validation [{d.val_fraction}]")
    g.add_argument("--split-seed", type=any_int, default=default(d.split_seed), help=f"flat layout: seed of the deterministic split [{d.split_seed}]")
    g.add_argument("--skip-bad", **switch, help="skip bad items (each reported) instead of stopping")
    if augment:  # training only: evaluation always scores them as ignore regions, as pycocotools and the VOC devkit
        g.add_argument("--train-difficult", **switch, help="train on VOC 'difficult' / COCO crowd objects too (default: ignore regions)")
    add_image_options(g, default)
    if not augment:
        return
    a = p.add_argument_group("augmentation (training only)")
    a.add_argument("--train-sizes", type=positive_int, nargs="+", metavar="PX", default=default(()), help="multi-scale training: random short side from these (default: the model's min size)")
    a.add_argument("--hflip-prob", type=fraction, default=default(d.hflip_prob), help=f"horizontal flip probability [{d.hflip_prob}]")
    a.add_argument("--photometric", **switch, help="random photometric distortion (brightness, contrast, saturation, hue)")
    a.add_argument("--iou-crop", **switch, help="random IoU crop (SSD-style)")
    a.add_argument("--crop", type=field_type("crop"), metavar="PX", default=default(None),
                   help="train on random PX x PX crops at native resolution (large images, small objects); the model's "
                   "input size becomes PX; cut objects with < 50%% of their area inside become ignore regions [off]")
    if from_config:
        a.add_argument("--aspect-grouping", **switch, help="batch portrait and landscape images apart [on]")
    else:
        a.add_argument("--no-aspect-grouping", dest="aspect_grouping", action="store_false", help="do not batch portrait and landscape images apart")


def arg_type(check, name: str):
    """An argparse ``type=`` from one of ``retinanet.config``'s limit checks (the same limits a
    config file's values meet): a bad value is one line naming the option, exit 2."""
    def parse(text: str):
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = name
    return parse


def field_type(name: str):
    """The argparse ``type=`` of the option that sets config field ``name`` (``LIMITS``)."""
    return arg_type(LIMITS[name], name)


positive_int = arg_type(C.positive_int, "positive_int")
non_negative_int = arg_type(C.non_negative_int, "non_negative_int")
fraction = arg_type(C.fraction, "fraction")
any_int = arg_type(lambda text: C._number(text, int), "int")


def add_image_options(g, default=lambda value: value, annotated: bool = True) -> None:
    """``--exif`` and ``--max-image-pixels`` (``DataConfig.exif``, ``DataConfig.max_image_pixels``):
    how image files are read, by every command that reads them (``default`` as in ``add_data_options``;
    ``annotated``: images with annotations, whose stated size ``auto`` looks at; predict's have none)."""
    d = DataConfig()
    auto = ("'auto' the displayed frame unless an annotation's stated size fits only the stored one" if annotated
            else "'auto' the same as 'apply' (no annotation to say otherwise)")
    g.add_argument("--exif", choices=EXIF_POLICIES, default=default(d.exif),
                   help="EXIF orientation of photos: 'apply' reads the displayed frame (as viewers, CVAT and ultralytics show it), "
                   f"'ignore' the stored pixels (LabelImg's frame), {auto} [{d.exif}]")
    g.add_argument("--max-image-pixels", type=positive_int, metavar="N", default=default(None),
                   help=f"images with more pixels (width x height) are refused as bad images [{d.max_image_pixels}]")


def expand_home_options(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with a leading ``~`` of every option value made the home folder (``config.expand_home``):
    where the command line's values become paths, for every command and option alike (``--out``,
    predict's inputs, ``--classes``, ``--config``, ...), as a shell does for an unquoted ``~/x``
    but not for ``"~/x"`` or ``--out=~/x``. Run by the CLI's parser on every parse."""
    for name, value in vars(args).items():
        setattr(args, name, expand_home(value))
    return args


def given_options(args: argparse.Namespace, sections: tuple[str, ...] = tuple(SECTIONS)) -> dict[str, dict[str, Any]]:
    """``{section: {field: value}}`` of the options present in ``args`` and not None, for the
    config ``sections`` asked for; options that are no config field (``--config``, ``--quiet``) are left out."""
    given = {OPTION_TO_FIELD.get(k, k): v for k, v in vars(args).items() if v is not None}
    return {name: {f.name: given[f.name] for f in dataclasses.fields(SECTIONS[name]) if f.name in given}
            for name in sections}


def data_config_from_args(args: argparse.Namespace, **overrides: Any) -> DataConfig:
    """``DataConfig`` defaults < the data options in ``args`` < ``overrides`` (eval, check-data)."""
    data = given_options(args, ("data",))["data"] | overrides
    return resolve_config(overrides={"data": data}, source="options")[1]


def add_tile_options(p: argparse.ArgumentParser) -> None:
    """``--tile [PX]``, ``--no-tile``, ``--tile-overlap F``, ``--tile-whole-image`` (predict, eval)."""
    t = p.add_argument_group("large images: tiled prediction (retinanet.model.tiling)")
    either = t.add_mutually_exclusive_group()  # both given: refused (not the last one silently winning)
    either.add_argument("--tile", nargs="?", const="auto", metavar="PX",
                   help="cut each image into overlapping PX x PX tiles at native resolution, run them in batches of "
                   "--batch-size, merge the boxes (fragments at tile edges dropped when a neighbour holds the object "
                   "whole, class-wise NMS); --tile alone: the model's input size (a --crop model's crop side); on Linux it "
                   "also fixes glibc's mmap threshold at 32 MiB for this process, so memory does not creep up with the "
                   "tiles (MALLOC_MMAP_THRESHOLD_ overrides) [as trained: a model trained with --crop PX is tiled with PX, "
                   "as its training evaluated (said on stderr), unless --min-size sets another input size; off for any "
                   "other model]")
    either.add_argument("--no-tile", dest="tile", action="store_const", const=False,
                   help="resize whole images to the model's input size, also for a --crop model (whose input size is "
                   "its crop side: large images shrink a lot)")
    t.add_argument("--tile-overlap", type=arg_type(C.between(0.0, 0.9), "tile_overlap"), metavar="F", help="share of a tile that neighbours overlap, 0..0.9 [0.2]")
    t.add_argument("--tile-whole-image", action="store_true",
                   help="with --tile: also one pass over the whole image resized to the input size, for objects larger "
                   "than the overlap (its memory grows with the image)")


def tile_options_from_args(args: argparse.Namespace, batch_size: int) -> TileOptions | bool | None:
    """The ``TileOptions`` of ``--tile``, unresolved (the tile side None = the model's input size);
    False for ``--no-tile``; None for neither (as the model was trained: ``model.tiling.trained_tiling``).
    Raises ``RetinaNetError`` for tile options without ``--tile`` or a bad PX."""
    if args.tile is None or args.tile is False:
        if args.tile_overlap is not None or args.tile_whole_image:
            given = [o for o, v in (("--tile-overlap", args.tile_overlap is not None),
                                    ("--tile-whole-image", args.tile_whole_image)) if v]
            raise RetinaNetError(f"{' and '.join(given)} {'sets' if len(given) == 1 else 'set'} up tiled prediction: "
                                 + ("--no-tile turns it off: give one" if args.tile is False else
                                    "give --tile too (--tile alone: the model's input size, for a --crop model its crop "
                                    "side: the default tiling with these options)"))
        return args.tile
    if args.tile == "auto":
        tile = None
    else:
        try:
            tile = int(args.tile)
        except ValueError:
            looks = " (it looks like an input: give the inputs before --tile, or --tile PX)" if Path(args.tile).exists() else ""
            raise RetinaNetError(f"--tile {args.tile}: a tile side in pixels (or --tile alone for the model's input size)"
                                 f"{looks}") from None
    overlap = 0.2 if args.tile_overlap is None else args.tile_overlap
    return TileOptions(tile=tile, overlap=overlap, batch_size=batch_size, whole_image=args.tile_whole_image)


def as_trained_tiling(crop: int | None, tiling: TileOptions | bool | None, model_input: int,
                      batch_size: int) -> tuple[TileOptions | None, str]:
    """``tiling`` (``tile_options_from_args``) for a model trained on ``crop`` px crops (None: on whole
    images) whose input size is ``model_input`` (another than ``crop``: ``--min-size`` given), and
    the line that says a choice made from the checkpoint ("" when none was): with neither ``--tile``
    nor ``--no-tile``, a ``--crop`` model is tiled with its crop side, as its training evaluated
    (``trained_tiling``), unless ``--min-size`` asks for whole images of another size. Returns the
    options (resolved when chosen here; None for whole images)."""
    if tiling is False:
        return None, ""
    if tiling is not None or not crop:
        return tiling, ""
    tile = trained_tiling(crop, model_input, batch_size)
    said = f"the model was trained on {crop} px crops at native resolution"
    if tile is None:
        return None, f"{said}, but --min-size {model_input} resizes whole images (--tile {crop} tiles them as training evaluated)"
    return tile, f"{said}: tiling with --tile {crop} (as training evaluated); --no-tile to resize whole images"
