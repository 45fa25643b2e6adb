"""The start of a training run: which weights it begins from, and the settings that go with them.

``resolve_start`` decides, before any work, from ``TrainConfig.weights``/``backbone_weights`` and
the model config:

- no weights given (both None): the arch's default start, said aloud: ``coco`` for
  ``resnet50_fpn``, ``coco-v2`` for ``resnet50_fpn_v2`` (torchvision's COCO detectors; their heads
  fit when ``fpn_channels`` is 256 and ``head_convs`` 4), else ImageNet weights for the ResNet or RegNet
  body (``backbone_weights: imagenet``) with a fresh FPN and heads;
- ``weights: none`` (``--from-scratch``): random weights;
- a detector file and backbone weights together: refused (the detector file holds the backbone).

Frozen layers only ever hold pretrained weights: ``norm`` and ``trainable_backbone_layers`` left
None become ``frozen_bn``/3 with pretrained weights and ``bn``/5 from scratch (said aloud); a
frozen BatchNorm or frozen stages asked for explicitly in a run from scratch are refused.
``load_start`` then fetches the file (``retinanet.model.weights``), loads it and records its
sha256 in the run's config.
"""

from __future__ import annotations

import dataclasses

import torch

from retinanet.config import ModelConfig, TrainConfig
from retinanet.engine.runtime import distributed as D
from retinanet.engine.runtime.checkpoint import load_weights_noted
from retinanet.errors import CheckpointError, RetinaNetError
from retinanet.model import ARCHS, check_arch
from retinanet.model.weights import DETECTOR_ARCHS, load_backbone_weights, weights_file

NONE = "none"
ALL_STAGES = 5  # trainable_backbone_layers that trains the whole body (ResNet or RegNet)


def fits_torchvision_head(model_cfg: ModelConfig, arch: str) -> bool:
    """The model has the arch and widths of torchvision's ``arch`` detector (fpn_channels 256,
    head_convs 4): its COCO file loads into it."""
    return model_cfg.arch == arch and model_cfg.fpn_channels == 256 and model_cfg.head_convs == 4


def default_start(model_cfg: ModelConfig) -> tuple[str, str]:
    """``(weights, backbone_weights)`` of a run that names none: the arch's COCO detector file when
    the model fits it, else ImageNet weights for the backbone."""
    for name, arch in DETECTOR_ARCHS.items():
        if fits_torchvision_head(model_cfg, arch):
            return name, NONE
    return NONE, "imagenet"


def _choice(value: str | None) -> str | None:
    """None stays None (not given); "none" in any case becomes ``NONE``."""
    return NONE if value is not None and value.strip().lower() == NONE else value


def resolve_start(model_cfg: ModelConfig, cfg: TrainConfig) -> tuple[ModelConfig, TrainConfig, list[str]]:
    """The run's start and the model settings it implies.

    Returns:
        ``model_cfg`` (``norm``, ``trainable_backbone_layers`` set), ``cfg`` (``weights`` and
        ``backbone_weights`` set: a name, a path or "none") and the lines that say what was chosen.
    Raises:
        RetinaNetError: a combination that makes no sense, saying why.
    """
    check_arch(model_cfg.arch)  # before the default start is looked up by it
    weights, backbone = _choice(cfg.weights), _choice(cfg.backbone_weights)
    notes = []
    if weights not in (None, NONE) and backbone not in (None, NONE):
        raise RetinaNetError(f"weights {weights!r} and backbone_weights {backbone!r} both given: the detector "
                             "file already holds a backbone; give one of them")
    if weights is None and backbone is None:
        weights, backbone = default_start(model_cfg)
        what = (f"the official COCO RetinaNet weights ({weights}) that fit {model_cfg.arch}" if weights != NONE else
                f"ImageNet weights for the {ARCHS[model_cfg.arch][0]} body (backbone_weights imagenet), a fresh FPN and heads")
        notes.append(f"start: no weights given: {what} (--from-scratch for random weights)")
    weights, backbone = weights or NONE, backbone or NONE
    fits = DETECTOR_ARCHS.get(weights.lower())
    if fits and not fits_torchvision_head(model_cfg, fits):
        raise RetinaNetError(f"weights {weights!r} are torchvision's {fits} (fpn_channels 256, head_convs 4); the model "
                             f"is {model_cfg.arch} with fpn_channels {model_cfg.fpn_channels}, head_convs "
                             f"{model_cfg.head_convs}: use --arch {fits} with the default widths, or --backbone-weights imagenet")
    pretrained = weights != NONE or backbone != NONE
    norm, layers = model_cfg.norm, model_cfg.trainable_backbone_layers
    if not pretrained:
        notes.append("start: from scratch (random weights, no pretrained backbone)")
        if norm == "frozen_bn":
            raise RetinaNetError("norm frozen_bn freezes BatchNorm at its initial values, which only makes sense "
                                 "with a pretrained backbone, and this run starts from scratch: use --norm bn, or "
                                 "start from --backbone-weights imagenet or --weights")
        if layers is not None and layers < ALL_STAGES:
            raise RetinaNetError(f"trainable_backbone_layers {layers} freezes {ALL_STAGES - layers} backbone stage(s) at "
                                 "their random initial values, which never learn, and this run starts from scratch: "
                                 f"use --trainable-backbone-layers {ALL_STAGES}, or start from --backbone-weights "
                                 "imagenet or --weights")
    resolved = {"norm": norm or ("frozen_bn" if pretrained else "bn"),
                "trainable_backbone_layers": layers if layers is not None else (3 if pretrained else ALL_STAGES)}
    said = [f"{k} {v}" for k, v in resolved.items() if getattr(model_cfg, k) is None]
    if said:
        why = "pretrained start" if pretrained else "from scratch: every layer trained, trainable BatchNorm"
        notes.append(f"model: {', '.join(said)} ({why})")
    return (dataclasses.replace(model_cfg, **resolved),
            dataclasses.replace(cfg, weights=weights, backbone_weights=backbone), notes)


def load_start(model: torch.nn.Module, cfg: TrainConfig, progress: bool = True) -> tuple[TrainConfig, list[str], str]:
    """Load the start ``resolve_start`` chose into ``model`` (the main process fetches a named
    file first, the others then find it in the cache; a failed fetch stops every rank with a message).

    Returns:
        ``cfg`` with ``start_sha256`` set (None from scratch), the keys re-initialised, and a line
        saying what was loaded (and which entry, from a torchvision reference-script checkpoint).
    Raises:
        CheckpointError: a fetch or load failure, or a file whose sha256 differs from a
            ``start_sha256`` the config gave.
    """
    which, value = ("weights", cfg.weights) if cfg.weights != NONE else ("backbone_weights", cfg.backbone_weights)
    if value == NONE:
        return dataclasses.replace(cfg, start_sha256=None), [], "weights: none, from scratch"
    depth, show = ARCHS[model.config.arch][0], progress and D.is_main_process()
    path, digest = D.main_first(lambda: weights_file(value, depth, progress=show), f"to fetch {which} {value!r}")
    if cfg.start_sha256 and cfg.start_sha256 != digest:
        raise CheckpointError(f"{path}: sha256 {digest[:16]}... differs from start_sha256 {cfg.start_sha256[:16]}... "
                              f"that the config records for {which} {value!r} (another file); remove start_sha256 "
                              "from the config to start from this file")
    reinit: list[str] = []
    note = None  # which entry of a torchvision reference-script checkpoint loaded
    if which == "weights":
        reinit, note = load_weights_noted(model, path, source=str(path))
    else:
        load_backbone_weights(model, path)
    line = (f"{which}: loaded {value}" + (f" ({path})" if str(path) != value else "") + f", sha256 {digest}"
            + (f"; {note}" if note else ""))
    return dataclasses.replace(cfg, start_sha256=digest), reinit, line
