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


def model_config_of(obj: dict[str, Any], path: str | os.PathLike = "checkpoint") -> ModelConfig:
    """The ``ModelConfig`` stored in one of our checkpoints."""
    try:
        return from_dict(ModelConfig, dict(obj["config"]["model"]), source=str(path))
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: checkpoint holds no model config") from None


def _arch_of_state_dict(state: dict[str, Any]) -> str:
    """Guess torchvision's arch from a bare state_dict: v2 heads have GroupNorm layers."""
    return "resnet50_fpn_v2" if any(k.startswith("head.classification_head.conv.0.1.") for k in state) else "resnet50_fpn"


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", channels_last: bool = False, **overrides: Any):
    """Build a model from our checkpoint or an official torchvision file, ready for inference.

    For a bare torchvision state_dict the arch is detected (v1/v2) and the class count read from
    the classification layer. ``overrides`` replace ``ModelConfig`` fields (for example
    ``score_thresh``, ``min_size``). ``channels_last`` puts the model in NHWC memory layout (same
    results, usually faster; its batches follow).

    Returns:
        (model in eval mode on ``device``, class map ``{"name": id}`` or None for a bare file)
    """
    obj = read_file(path)
    if is_checkpoint(obj):
        cfg = model_config_of(obj, path)
        class_map = obj.get("class_map")
        state = obj.get("ema") or obj["model"]
    else:
        key = "head.classification_head.cls_logits.weight"
        if key not in obj:
            raise CheckpointError(f"{path}: not a RetinaNet state_dict (no '{key}')")
        num_anchors = 9
        cfg = ModelConfig(arch=_arch_of_state_dict(obj), num_classes=obj[key].shape[0] // num_anchors)
        class_map, state = None, obj
    values = {**cfg.__dict__, **overrides}
    model = build_model(**values)
    load_weights(model, state, source=str(path))
    model = model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, class_map
