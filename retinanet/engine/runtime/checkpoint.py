"""Models from weights files: ``load_model`` builds a ready model from one of our checkpoints or
an official torchvision state_dict (``model_config_of`` reads a checkpoint's ``ModelConfig``).

The file format itself (``FORMAT``, atomic ``save_checkpoint``, ``read_file``, ``is_checkpoint``)
lives in ``retinanet.checkpoint_io``, below both ``model`` and ``engine``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from retinanet.checkpoint_io import is_checkpoint, read_file
from retinanet.config import ModelConfig, from_dict
from retinanet.errors import CheckpointError
from retinanet.model import build_model, load_weights
from retinanet.model.weights import DETECTOR_URLS, load_state, weights_file


def model_config_of(obj: dict[str, Any], path: str | os.PathLike = "checkpoint") -> ModelConfig:
    """The ``ModelConfig`` stored in one of our checkpoints (``legacy_frozen_bn_eps`` for those
    written before ``frozen_bn_eps`` was recorded)."""
    try:
        values = dict(obj["config"]["model"])
        if "frozen_bn_eps" not in values:
            values["frozen_bn_eps"] = legacy_frozen_bn_eps(values, dict(obj["config"].get("train") or {}))
        return from_dict(ModelConfig, values, source=str(path))
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: checkpoint holds no model config") from None


def legacy_frozen_bn_eps(model: dict[str, Any], train: dict[str, Any]) -> float:
    """The FrozenBatchNorm eps a checkpoint without ``frozen_bn_eps`` trained with.

    Before it was recorded, loading a bare state_dict (torchvision's v1 COCO file) into a
    frozen-BN ``resnet50_fpn`` set the eps to 0, and every other start kept 1e-5. So: 0 for a
    frozen-BN ``resnet50_fpn`` that started from a weights file, else 1e-5 (a run that started
    from one of our own checkpoints kept 1e-5 and is read wrongly here: retrain, or set
    ``frozen_bn_eps`` in its config).
    """
    started_from_file = train.get("weights") not in (None, "none")
    v1_frozen = model.get("arch", "resnet50_fpn") == "resnet50_fpn" and model.get("norm", "frozen_bn") == "frozen_bn"
    return 0.0 if v1_frozen and started_from_file else 1e-5


def _arch_of_state_dict(state: dict[str, Any]) -> str:
    """Guess torchvision's arch from a bare state_dict: v2 heads have GroupNorm layers."""
    return "resnet50_fpn_v2" if any(k.startswith("head.classification_head.conv.0.1.") for k in state) else "resnet50_fpn"


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", channels_last: bool = False, **overrides: Any):
    """Build a model from our checkpoint or an official torchvision file, ready for inference.

    ``path`` may also name official weights (``coco``, ``coco-v2``: fetched once into torch.hub's
    cache, hash-checked). Our checkpoint is rebuilt with the config it stores, FrozenBatchNorm eps
    included. For a bare torchvision state_dict the arch is detected (v1/v2) and the class count read from
    the classification layer. ``overrides`` replace ``ModelConfig`` fields (for example
    ``score_thresh``, ``min_size``). ``channels_last`` puts the model in NHWC memory layout (same
    results, usually faster; its batches follow).

    Returns:
        (model in eval mode on ``device``, class map ``{"name": id}`` or None for a bare file)
    """
    if str(path).lower() in DETECTOR_URLS:
        path = weights_file(str(path))[0]
    obj = read_file(path)
    if is_checkpoint(obj):
        cfg = model_config_of(obj, path)
        class_map = obj.get("class_map")
        state = obj.get("ema") or obj["model"]
    else:
        key = "head.classification_head.cls_logits.weight"
        if key not in obj:
            raise CheckpointError(f"{path}: neither our checkpoint nor a torchvision RetinaNet state_dict (no '{key}')")
        num_anchors = 9
        cfg = ModelConfig(arch=_arch_of_state_dict(obj), num_classes=obj[key].shape[0] // num_anchors)
        class_map, state = None, obj
    values = {**cfg.__dict__, **overrides}
    model = build_model(**values)
    if not is_checkpoint(obj):
        load_weights(model, state, source=str(path))  # torchvision's file: its eps (v1: 0)
    else:
        load_state(model, state, str(path))  # the eps the checkpoint's config records
    model = model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, class_map
