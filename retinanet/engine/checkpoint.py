"""Checkpoints: written atomically, plain types only, loaded with ``weights_only=True``.

Our checkpoint is a dict::

    {"format": "retinanet-checkpoint", "version": 1,
     "model": state_dict, "config": {"model": {...}, "data": {...}, "train": {...}},
     "class_map": {"name": id, ...} or None, "epoch": int, ... training state ...}

An official torchvision file is a bare state_dict; ``load_model`` accepts both.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from retinanet.config import ModelConfig, from_dict
from retinanet.errors import CheckpointError

FORMAT = "retinanet-checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A crash or Ctrl-C during the write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or state_dict file with ``weights_only=True``.

    Raises:
        CheckpointError: naming the file when it is missing, not a torch file, corrupt, or holds
            something other than a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict or a retinanet checkpoint, found {type(obj).__name__}")
    return obj


def is_checkpoint(obj: dict[str, Any]) -> bool:
    """True for our checkpoint format, False for a bare state_dict."""
    return obj.get("format") == FORMAT and "model" in obj


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
    from retinanet.model import build_model, load_weights

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
