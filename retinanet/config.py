"""Configuration as frozen dataclasses, one per concern.

Each part of the toolkit receives only its own sub-config: the model gets ``ModelConfig``, the data
pipeline ``DataConfig``, the training engine ``TrainConfig``. ``dataclasses.asdict`` of these is
what checkpoints store (plain types only, so they load with ``weights_only=True``), and
``from_dict`` rebuilds them, ignoring nothing silently: unknown keys are an error (except the
few removed fields in ``REMOVED_FIELDS``, which old checkpoints and config files still carry).

A run's configs come from three layers, lowest first: the dataclass defaults, a config file
(``read_config_file``: YAML/JSON with ``model:``, ``data:``, ``train:`` sections), and the options
given on the command line. ``resolve_config`` is the one place that merges them (train, eval and
the demo all use it); sections are plain dicts ``{"model": {...}, "data": {...}, "train": {...}}``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from retinanet.files import load_yaml, write_atomic
from retinanet.errors import RetinaNetError

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    """What ``retinanet.build_model`` needs to rebuild a model.

    ``num_classes`` is the number of classification outputs, indexed by class id: id 0 is never a
    real class (torchvision's convention), so a class map with ids 1..20 needs ``num_classes=21``
    and the COCO head has 91 outputs indexed by COCO category id (with gaps).
    """

    arch: str = "resnet50_fpn"
    num_classes: int = 91
    min_size: int = 800  # short side of the network input, in pixels
    max_size: int = 1333  # cap on the long side, in pixels
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 300
    # per FPN level, before NMS; a larger detections_per_img (or max_dets of a call) raises it to that
    # (candidates_per_level), so that one level alone can fill the cap
    topk_candidates: int = 1000
    # None (the default): chosen by the run's start (retinanet.engine.train.start): with a pretrained
    # backbone "frozen_bn" and 3 stages trained, from scratch "bn" and all 5
    norm: str | None = None  # "frozen_bn" (frozen BatchNorm, pretrained start only) or "bn" (trainable)
    trainable_backbone_layers: int | None = None  # 0..5 backbone stages trained (< 5: pretrained start only)
    frozen_bn_eps: float = 1e-5  # eps of the frozen BatchNorm; 0 for torchvision's v1 COCO file (its overwrite_eps)
    box_loss: str | None = None  # "l1" or "giou"; None = the arch's default (v1: l1, v2: giou)
    fpn_channels: int = 256  # FPN and head width; 256 = torchvision's (needed for its weights)
    head_convs: int = 4  # conv3x3 layers per head subnet before the output layer; 4 = torchvision's
    # base anchor side of each FPN level P3..P7, in network-input pixels (each level adds x2^(1/3),
    # x2^(2/3) and 3 aspect ratios); torchvision's (32 .. 512). Objects much smaller than the first
    # get no anchor of IoU >= 0.5: lower them (or raise min_size) for small objects (check-data --out)
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)

    def candidates_per_level(self, max_dets: int | None = None) -> int:
        """The top-k of each FPN level before NMS for a cap of ``max_dets`` detections per image
        (None: ``detections_per_img``): ``topk_candidates``, or the cap where that is larger.

        With 1000 per level and ``max_dets`` 5000, a whole-image pass over 4096 small objects gave
        786 detections (nearly all from one level), far below the cap asked for; following the cap,
        one level alone can fill it. At torchvision's defaults (1000 per level, 300 per image) it
        is ``topk_candidates``: torchvision's detections.
        """
        return max(int(self.topk_candidates), int(self.detections_per_img if max_dets is None else max_dets))


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how batches are made (see ``retinanet.data``)."""

    root: str | None = None  # VOCdevkit root, flat images+XML folder, COCO JSON; None = synthetic
    format: str | None = None  # "voc" | "voc-flat" | "coco"; None = detect from ``root``
    years: tuple[str, ...] = ()  # VOC years; empty = every VOC20xx folder found
    train_split: str = "train"  # VOC ImageSets/Main name; COCO: the split named in the JSON's file name
    val_split: str = "val"  # as train_split; COCO: or a JSON path; flat layout: or a .txt list of val images
    classes: str | None = None  # class map JSON {"name": id}; None = discover from annotations
    val_fraction: float = 0.2  # flat layout: share of images held out for validation
    split_seed: int = 0  # flat layout: seed of the deterministic split
    skip_bad: bool = False  # skip (and report) bad items instead of stopping
    exif: str = "auto"  # EXIF orientation: "auto" | "apply" | "ignore" (see retinanet.data.images)
    max_image_pixels: int | None = 178_956_970  # larger images are bad images (PIL's bomb limit); None = no limit
    train_difficult: bool = False  # train on VOC "difficult" objects too
    train_sizes: tuple[int, ...] = ()  # multi-scale training short sides; empty = model min_size
    hflip_prob: float = 0.5
    photometric: bool = False
    iou_crop: bool = False
    crop: int | None = None  # train on random crops of this side at native resolution (retinanet.data.crop)
    aspect_grouping: bool = True  # batch portrait (w/h < 1) and landscape images apart
    workers: int = 2  # DataLoader processes
    synthetic_train: int = 400  # root None: images of the embedded synthetic dataset's train split
    synthetic_val: int = 100  # ... of its val split
    synthetic_size: int = 256  # ... their side, pixels (square images)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of a training run (see ``retinanet.engine.train.loop``)."""

    out: str = "runs/train"
    epochs: int = 12
    batch_size: int = 4  # per process
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500  # linear warmup steps, at most warmup_max_fraction of the run's steps
    warmup_max_fraction: float = 0.2  # cap on the warmup's share of the run (engine.optim.resolve_warmup)
    warmup_factor: float = 0.001
    scheduler: str = "multistep"  # "multistep" or "cosine"
    lr_steps: tuple[int, ...] = (8, 11)  # epochs at which multistep multiplies the lr by lr_gamma
    lr_gamma: float = 0.1
    clip_grad_norm: float | None = None
    amp: str = "auto"  # mixed precision: auto | on | bf16 | fp16 | off (retinanet.engine.runtime.precision)
    channels_last: bool = True  # model and batches in NHWC memory (same math; faster on recent CPUs and GPUs)
    ema: bool = False
    ema_decay: float = 0.9998
    ema_ramp_iters: int = 2000  # EMA decay ramps up as ema_decay * (1 - exp(-updates / this)); 0 = constant
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    # the start (retinanet.engine.train.start): "coco", "coco-v2" (torchvision's COCO detectors), a file
    # (torchvision state_dict or our checkpoint), "none" (no detector weights); None: the arch's default
    weights: str | None = None
    backbone_weights: str | None = None  # "imagenet" or a torchvision ResNet/RegNet file, for the body only; "none"
    start_sha256: str | None = None  # sha256 of the start file, written by the run; if given, checked
    resume: str | None = None
    sync_bn: bool = False
    eval_every: int = 1  # evaluate every N epochs (and always after the last one)
    time: float | None = None  # minutes: fit epochs, evaluations and warmup to this budget (retinanet.engine.budget)
    time_fitted: bool = False  # the run fitted its schedule to ``time`` already (a resume keeps it)
    max_steps: int | None = None  # stop after this many steps, the lr schedule ending there (set by the --time fit)
    print_every: int = 20  # every N steps: losses read from the device, a progress line in train.log (and on stdout
    # when it is not a terminal), TensorBoard step scalars; between these points a step does not wait for the device
    tensorboard: bool = False
    max_bad_steps: int = 20  # stop after this many consecutive non-finite losses
    coco_backend: str = "pycocotools"  # the per-epoch COCO metrics: "pycocotools" (the reference) or "faster_coco_eval"

    def __post_init__(self):
        if isinstance(self.amp, bool):  # configs and checkpoints written when amp was a switch
            object.__setattr__(self, "amp", "on" if self.amp else "off")


# --- limits of the numeric settings: one table, read by from_dict (config files, checkpoints, the
# command line through resolve_config) and by the command line's argparse types (retinanet.cli.options)


def _number(value: Any, kind: type) -> int | float:
    """``value`` (a number, or the text of one) as ``kind``; ValueError saying what it is not."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be {'a whole number' if kind is int else 'a number'}, not {value!r}")
    try:
        number = kind(value) if isinstance(value, str) else value
    except ValueError:
        raise ValueError(f"must be {'a whole number' if kind is int else 'a number'}, not {value!r}") from None
    if kind is int and (isinstance(number, float) and not number.is_integer()):
        raise ValueError(f"must be a whole number, not {value!r}")
    if kind is float and number != number:
        raise ValueError("must be a number, not nan")
    return kind(number)


def at_least(low: int | float, kind: type = int) -> Callable[[Any], Any]:
    """A check: a ``kind`` number >= ``low``."""
    def check(value: Any) -> Any:
        number = _number(value, kind)
        if number < low:
            raise ValueError(f"must be at least {low}, not {number}")
        return number
    check.__name__ = f"at_least_{low}"
    return check


def between(low: float, high: float, kind: type = float, *, low_open: bool = False, high_open: bool = False):
    """A check: a ``kind`` number in ``[low, high]`` (``low_open``/``high_open``: the end excluded)."""
    def check(value: Any) -> Any:
        number = _number(value, kind)
        if number < low or number > high or (low_open and number == low) or (high_open and number == high):
            raise ValueError(f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}, not {number}")
        return number
    check.__name__ = f"between_{low}_{high}"
    return check


def above(low: float) -> Callable[[Any], float]:
    """A check: a number > ``low``."""
    def check(value: Any) -> float:
        number = _number(value, float)
        if not number > low or number == float("inf"):
            raise ValueError(f"must be a finite number above {low}, not {number}")
        return number
    check.__name__ = f"above_{low}"
    return check


positive_int, non_negative_int = at_least(1), at_least(0)
fraction = between(0.0, 1.0)  # a probability or a threshold
positive_number, non_negative_number = above(0.0), between(0.0, float("inf"), high_open=True)
MIN_SYNTHETIC_SIZE = 16  # the synthetic generator fails on smaller images

# field -> check; a sequence field checks each item; None passes where the field allows it
LIMITS: dict[str, Callable[[Any], Any]] = {
    "num_classes": at_least(2), "min_size": positive_int, "max_size": positive_int, "score_thresh": fraction,
    "nms_thresh": fraction, "detections_per_img": positive_int, "topk_candidates": positive_int,
    "trainable_backbone_layers": between(0, 5, int), "frozen_bn_eps": non_negative_number, "fpn_channels": positive_int,
    "head_convs": between(1, 4, int), "anchor_sizes": positive_int,
    "val_fraction": between(0.0, 1.0, high_open=True), "max_image_pixels": positive_int, "train_sizes": positive_int,
    "hflip_prob": fraction, "workers": non_negative_int, "synthetic_train": positive_int, "synthetic_val": positive_int,
    "synthetic_size": at_least(MIN_SYNTHETIC_SIZE),
    "epochs": positive_int, "batch_size": positive_int, "lr": positive_number, "momentum": between(0.0, 1.0, high_open=True),
    "weight_decay": non_negative_number, "warmup_iters": non_negative_int,
    "warmup_factor": between(0.0, 1.0, low_open=True), "lr_steps": non_negative_int, "lr_gamma": positive_number,
    "clip_grad_norm": positive_number, "ema_decay": between(0.0, 1.0, high_open=True), "ema_ramp_iters": non_negative_int,
    "eval_every": positive_int, "print_every": positive_int, "max_bad_steps": positive_int,
    "crop": at_least(32), "warmup_max_fraction": fraction, "time": positive_number, "max_steps": positive_int,
}


def limit_problems(values: Mapping[str, Any], section: str) -> list[str]:
    """``section.setting`` and its limit for each value of ``values`` (one config section) outside
    ``LIMITS``."""
    problems = []
    for name, value in values.items():
        check = LIMITS.get(name)
        if check is None or value is None:
            continue
        for item in (value if isinstance(value, list | tuple) else (value,)):
            try:
                check(item)
            except ValueError as err:
                problems.append(f"{section}.{name} {err}")
                break
    return problems


def check_limits(values: Mapping[str, Any], section: str, source: str) -> None:
    """Raise ``RetinaNetError`` naming ``source`` and every ``limit_problems`` of ``values``."""
    problems = limit_problems(values, section)
    if problems:
        raise RetinaNetError(f"{source}: {'; '.join(problems)}")


def kind_problems(values: Mapping[str, Any], types: Mapping[str, str], section: str) -> dict[str, str]:
    """Setting -> ``section.setting ...`` for each value of ``values`` (one config section) that is not of its
    field's kind (``types``: field -> annotation text): a switch takes true or false (a quoted
    ``"no"`` or ``"false"`` would be a string, and on), a list setting a list (a lone number would
    fail later, in a traceback). Numbers are ``limit_problems``' business."""
    problems = {}
    for name, value in values.items():
        kind = types.get(name, "")
        if value is None and "None" in kind:
            continue
        if kind == "bool" and not isinstance(value, bool):
            problems[name] = f"{section}.{name} must be true or false, not {value!r}"
        elif kind.startswith("tuple") and not isinstance(value, list | tuple):
            one = f" (one item: [{value}])" if isinstance(value, int | float | str) else ""  # not for null, a mapping
            problems[name] = f"{section}.{name} must be a list, not {value!r}{one}"
    return problems


# the settings that name a file or folder: a leading "~" in them is the home folder, wherever they come from
PATH_FIELDS = frozenset({"root", "classes", "val_split", "out", "weights", "backbone_weights", "resume"})


def expand_home(value: Any) -> Any:
    """``value`` with a leading ``~`` or ``~user`` made that home folder (``os.path.expanduser``):
    a string, or each string of a list or tuple; anything else, and ``~`` of no known user, as it is.

    The one rule for ``~`` in paths: ``from_dict`` applies it to ``PATH_FIELDS`` (config files,
    stored configs, the options ``resolve_config`` merges), the command line to every option
    (``retinanet.cli.options.expand_home_options``)."""
    if isinstance(value, str):
        return os.path.expanduser(value) if value.startswith("~") else value
    if isinstance(value, list | tuple):
        return type(value)(expand_home(v) for v in value)
    return value


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# fields that no longer exist but old checkpoints and config.yaml files still hold: dropped on read
REMOVED_FIELDS: dict[type, tuple[str, ...]] = {TrainConfig: ("extra",)}


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``; lists become tuples where the field is a tuple, and
    a ``~`` in a path setting (``PATH_FIELDS``) is the home folder (``expand_home``).

    Raises:
        RetinaNetError: naming ``source`` and the unknown keys, values of the wrong kind
            (``kind_problems``) or outside their limits (``limit_problems``), all at once.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in values.items() if k not in REMOVED_FIELDS.get(cls, ())}
    section = next((k for k, c in SECTIONS.items() if c is cls), cls.__name__)
    unknown = sorted(set(values) - set(names))
    problems = []
    if unknown:
        home = {k: next((n for n, c in SECTIONS.items() if k in {f.name for f in dataclasses.fields(c)}), None) for k in unknown}
        said = [f"{k} (it belongs in {home[k]}:)" if home[k] else k for k in unknown]
        problems.append(f"unknown option(s) in {section}: {', '.join(said)}")
    known = {k: v for k, v in values.items() if k in names}
    wrong_kind = kind_problems(known, {k: str(f.type) for k, f in names.items()}, section)
    problems += [*wrong_kind.values(), *limit_problems({k: v for k, v in known.items() if k not in wrong_kind}, section)]
    if problems:  # every problem of the section at once
        raise RetinaNetError(f"{source}: {'; '.join(problems)}")
    kwargs = {}
    for key, value in values.items():
        if key in PATH_FIELDS:
            value = expand_home(value)
        if isinstance(value, list) and "tuple" in str(names[key].type):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)  # type: ignore[call-arg]


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def recipe_names() -> list[str]:
    """Names of the recipes shipped in ``retinanet/recipes`` (``--config NAME``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def find_config(name_or_path: str) -> Path:
    """A config file path: an existing file, or the name of a shipped recipe (``quick_synthetic``).

    Raises:
        RetinaNetError: neither a file nor a recipe name.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and shipped.is_file():  # a recipe's name, even beside a folder of that name
        return shipped
    if path.is_dir():
        inside = path / "config.yaml"
        raise RetinaNetError(f"{path}: a folder, not a config file" + (f"; give {inside}" if inside.is_file() else ""))
    raise RetinaNetError(f"{name_or_path}: no such config file, nor a shipped recipe "
                         f"({', '.join(recipe_names())})")


def read_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """The ``model:``, ``data:``, ``train:`` sections of a YAML/JSON config file (missing ones empty).

    Raises:
        RetinaNetError: naming ``path``: unreadable, not YAML, not a mapping, an unknown section,
            or a section that is not a mapping. (Unknown options are found by ``resolve_config``.)
    """
    path = Path(path)
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (Notepad) is not content
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RetinaNetError(f"{path}: cannot read config ({first})") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise RetinaNetError(f"{path}: a config file is a mapping with model:, data:, train: sections")
    unknown = sorted(set(loaded) - set(SECTIONS))
    if unknown:
        raise RetinaNetError(f"{path}: unknown section(s) {', '.join(map(str, unknown))} (model, data, train)")
    sections = {}
    for name in SECTIONS:
        sec = loaded.get(name) or {}
        if not isinstance(sec, dict):
            raise RetinaNetError(f"{path}: section '{name}' must be a mapping of options")
        sections[name] = dict(sec)
    return sections


def write_config_file(path: str | Path, configs: Mapping[str, Any], comment: str = "") -> None:
    """Write ``{"model": cfg, "data": cfg, "train": cfg}`` (dataclasses or dicts) as YAML that
    ``read_config_file`` reads back to the same configs; ``comment``'s lines first, as YAML comments."""
    def plain(section: Any) -> dict[str, Any]:
        values = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    head = "".join(f"# {line}\n" for line in comment.splitlines())
    write_atomic(path, head + yaml.safe_dump({name: plain(sec) for name, sec in configs.items()}, sort_keys=False))


def resolve_config(file_sections: Mapping[str, Mapping[str, Any]] | None = None,
                   overrides: Mapping[str, Mapping[str, Any]] | None = None,
                   source: str = "config") -> tuple[ModelConfig, DataConfig, TrainConfig]:
    """The run's configs: dataclass defaults < ``file_sections`` < ``overrides``.

    Args:
        file_sections: ``{"model": {...}, "data": {...}, "train": {...}}`` from a config file (or
            a checkpoint's stored config); missing sections are empty.
        overrides: the same shape, the options the user gave (e.g. on the command line); a value
            here replaces the file's. Lists become tuples where the field is a tuple.
        source: named in errors about ``file_sections`` (the file's path).
    Raises:
        RetinaNetError: an unknown section or option, naming ``source`` (or "options").
    """
    file_sections, overrides = file_sections or {}, overrides or {}
    for where, sections in ((source, file_sections), ("options", overrides)):
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise RetinaNetError(f"{where}: unknown section(s) {', '.join(map(str, unknown))} (model, data, train)")
    configs, problems = [], []
    for name, cls in SECTIONS.items():  # every section's problems at once
        try:
            base = from_dict(cls, dict(file_sections.get(name) or {}), source=source)
            given = dict(overrides.get(name) or {})
            configs.append(from_dict(cls, {**dataclasses.asdict(base), **given}, source="options") if given else base)
        except RetinaNetError as err:
            problems.append(str(err))
    if problems:
        raise RetinaNetError("; ".join(problems) if len(problems) == 1 else "\n".join(problems))
    return tuple(configs)  # type: ignore[return-value]
