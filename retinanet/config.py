"""Configuration as frozen dataclasses, one per concern.

Each part of the toolkit receives only its own sub-config: the model gets ``ModelConfig``, the data
pipeline ``DataConfig``, the training engine ``TrainConfig``. ``dataclasses.asdict`` of these is
what checkpoints store (plain types only, so they load with ``weights_only=True``), and
``from_dict`` rebuilds them, ignoring nothing silently: unknown keys are an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
    topk_candidates: int = 1000  # per FPN level, before NMS
    norm: str = "frozen_bn"  # "frozen_bn" (pretrained start) or "bn" (from scratch)
    trainable_backbone_layers: int = 3  # 0..5 ResNet stages left trainable
    box_loss: str | None = None  # "l1" or "giou"; None = the arch's default (v1: l1, v2: giou)
    fpn_channels: int = 256  # FPN and head width; 256 = torchvision's (needed for its weights)
    head_convs: int = 4  # conv3x3 layers per head subnet before the output layer; 4 = torchvision's


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
    aspect_grouping: bool = True  # batch portrait (w/h < 1) and landscape images apart
    workers: int = 2  # DataLoader processes
    synthetic_train: int = 400  # root None: images of the embedded synthetic dataset's train split
    synthetic_val: int = 100  # ... of its val split
    synthetic_size: int = 256  # ... their side, pixels (square images)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of a training run (see ``retinanet.engine.train``)."""

    out: str = "runs/train"
    epochs: int = 12
    batch_size: int = 4  # per process
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    scheduler: str = "multistep"  # "multistep" or "cosine"
    lr_steps: tuple[int, ...] = (8, 11)  # epochs at which multistep divides the lr by 10
    lr_gamma: float = 0.1
    clip_grad_norm: float | None = None
    amp: bool = False
    channels_last: bool = True  # model and batches in NHWC memory (same math; faster on recent CPUs and GPUs)
    ema: bool = False
    ema_decay: float = 0.9998
    ema_ramp_iters: int = 2000  # EMA decay ramps up as ema_decay * (1 - exp(-updates / this)); 0 = constant
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    weights: str | None = None  # pretrained weights file (torchvision or ours)
    resume: str | None = None
    sync_bn: bool = False
    eval_every: int = 1  # evaluate every N epochs (and always after the last one)
    print_every: int = 20  # a progress line every N steps in train.log (and on stdout when it is not a terminal)
    tensorboard: bool = False
    max_bad_steps: int = 20  # stop after this many consecutive non-finite losses
    extra: dict[str, Any] = field(default_factory=dict)


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``; lists become tuples where the field is a tuple.

    Raises:
        RetinaNetError: naming ``source`` and the unknown keys.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise RetinaNetError(f"{source}: unknown option(s) for {cls.__name__}: {', '.join(unknown)}")
    kwargs = {}
    for key, value in values.items():
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
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise RetinaNetError(f"{name_or_path}: no such config file, nor a shipped recipe "
                         f"({', '.join(recipe_names())})")
