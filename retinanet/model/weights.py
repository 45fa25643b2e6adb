"""Loading official torchvision weights, bare state_dicts and our checkpoints."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from retinanet.checkpoint_io import is_checkpoint, read_file
from retinanet.errors import CheckpointError

CLS_KEYS = ("head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias")
PRIOR = 0.01


def _few(keys: list[str], n: int = 5) -> str:
    head = ", ".join(keys[:n])
    return f"{head} (+{len(keys) - n} more, {len(keys)} in all)" if len(keys) > n else head


def reset_cls_logits(model: nn.Module) -> None:
    """Re-initialise the final classification conv (normal std 0.01, bias from prior 0.01)."""
    conv = model.head.classification_head.cls_logits
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(conv.bias, -math.log((1 - PRIOR) / PRIOR))


def _set_frozen_bn_eps(model: nn.Module, eps: float) -> None:
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps


def load_weights(model: nn.Module, path_or_state_dict: Any, *, source: str | None = None) -> list[str]:
    """Load weights into ``model``; a different class count skips the final classification conv.

    Args:
        model: a ``RetinaNet``.
        path_or_state_dict: file path, bare state_dict, or our checkpoint dict.
        source: name used in error messages (defaults to the path).
    Returns:
        keys that were skipped (re-initialised), empty when everything loaded.
    Raises:
        CheckpointError: unreadable file, or missing/unexpected/mis-shaped keys.
    """
    if isinstance(path_or_state_dict, dict):
        obj, name = path_or_state_dict, source or "state_dict"
    else:
        name = source or str(path_or_state_dict)
        obj = read_file(path_or_state_dict)
    is_ckpt = is_checkpoint(obj)
    state = obj["model"] if is_ckpt else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{name}: not a model state_dict (values must all be tensors)")
    own = model.state_dict()
    skipped = [k for k in CLS_KEYS if k in state and k in own and state[k].shape != own[k].shape]
    filtered = OrderedDict((k, v) for k, v in state.items() if k not in skipped)
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        filtered._metadata = meta
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in filtered.items()
           if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{name}: tensor shapes do not fit the model: {_few(bad)}")
    try:
        result = model.load_state_dict(filtered, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{name}: does not fit the model: {str(err).splitlines()[0]}") from None
    missing = [k for k in result.missing_keys if k not in skipped]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if result.unexpected_keys:
            parts.append(f"unexpected keys: {_few(list(result.unexpected_keys))}")
        raise CheckpointError(f"{name}: does not fit the model ({'; '.join(parts)})")
    if skipped:
        reset_cls_logits(model)
    cfg = getattr(model, "config", None)
    if (not is_ckpt and cfg is not None and cfg.arch == "resnet50_fpn" and cfg.norm == "frozen_bn"):
        _set_frozen_bn_eps(model, 0.0)  # torchvision's overwrite_eps for the official v1 weights
    return skipped
