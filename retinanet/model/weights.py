"""torchvision's weights: official files, bare state_dicts, the checkpoints of torchvision's detection
reference scripts (their ``model`` entry: ``model_entry``); our own checkpoint format is
``retinanet.engine.runtime.checkpoint``'s, which unwraps it and calls ``load_state`` here.

Named weights (``coco``, ``coco-v2``, ``imagenet``) are torchvision's official files, fetched once
through ``torch.hub``'s cache: ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch`` without
``TORCH_HOME``), the place ``torch.hub.load_state_dict_from_url`` uses. The file name carries the
first hex digits of its sha256 (``retinanet_resnet50_fpn_coco-eeacb38b.pth``): a download and a
cached file are both checked against it. Nothing else is ever downloaded.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import regnet, resnet
from torchvision.models.detection.retinanet import RetinaNet_ResNet50_FPN_V2_Weights, RetinaNet_ResNet50_FPN_Weights
from torchvision.ops import FrozenBatchNorm2d

from retinanet.errors import CheckpointError
from retinanet.files import NOT_WEIGHTS as _NOT_WEIGHTS
from retinanet.files import read_file, sha256_of

# name -> URL of torchvision's official detector files (``--weights NAME``) and the arch they fit
DETECTOR_URLS = {"coco": RetinaNet_ResNet50_FPN_Weights.COCO_V1.url,
                 "coco-v2": RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1.url}
DETECTOR_ARCHS = {"coco": "resnet50_fpn", "coco-v2": "resnet50_fpn_v2"}
# body -> URL of torchvision's ImageNet classification file (``--backbone-weights imagenet``): the
# ResNets' IMAGENET1K_V1 (what torchvision's detection references start from), the RegNets'
# IMAGENET1K_V2 (torchvision's better recipe; V1 is the pycls original)
IMAGENET_URLS = {"resnet18": resnet.ResNet18_Weights.IMAGENET1K_V1.url,
                 "resnet34": resnet.ResNet34_Weights.IMAGENET1K_V1.url,
                 "resnet50": resnet.ResNet50_Weights.IMAGENET1K_V1.url,
                 "resnet101": resnet.ResNet101_Weights.IMAGENET1K_V1.url,
                 "resnet152": resnet.ResNet152_Weights.IMAGENET1K_V1.url,
                 "regnet_x_400mf": regnet.RegNet_X_400MF_Weights.IMAGENET1K_V2.url,
                 "regnet_x_800mf": regnet.RegNet_X_800MF_Weights.IMAGENET1K_V2.url,
                 "regnet_x_1_6gf": regnet.RegNet_X_1_6GF_Weights.IMAGENET1K_V2.url,
                 "regnet_x_3_2gf": regnet.RegNet_X_3_2GF_Weights.IMAGENET1K_V2.url}
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's convention: name-<sha256 prefix>.pth

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


def set_frozen_bn_eps(model: nn.Module, eps: float) -> None:
    """Set the eps of every ``FrozenBatchNorm2d`` of ``model`` (its config is the caller's to
    record: ``frozen_bn_eps_of`` reads the eps back)."""
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps


def frozen_bn_eps_of(model: nn.Module, default: float) -> float:
    """The eps of ``model``'s ``FrozenBatchNorm2d`` layers (``default`` when it has none)."""
    return next((float(m.eps) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)), default)


def torchvision_eps(arch: str, norm: str | None, eps: float) -> float:
    """The FrozenBatchNorm eps a bare torchvision state_dict runs with: 0 for the official v1 COCO
    file (a frozen-BN ``resnet50_fpn``, as torchvision's ``overwrite_eps`` sets), else ``eps``."""
    return 0.0 if arch == "resnet50_fpn" and norm == "frozen_bn" else eps


# --- named weights: torchvision's official files, fetched once into torch.hub's cache -------------


def cache_dir() -> Path:
    """Where named weights live: ``$TORCH_HOME/hub/checkpoints`` (torch.hub's cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def verify_hash(path: Path, source: str) -> str:
    """The sha256 of ``path``, checked against the prefix in its name (``name-<hex>.pth``).

    Raises:
        CheckpointError: the digest does not start with that prefix (a corrupt or replaced file).
    """
    digest = sha256_of(path)
    match = HASH_IN_NAME.search(path.name)
    if match and not digest.startswith(match.group(1)):
        raise CheckpointError(f"{path}: sha256 {digest[:16]}... does not start with {match.group(1)}, the hash in "
                              f"its name: the file is corrupt or not the official one ({source}); delete it and "
                              "run the command again to download it")
    return digest


def unwritable_cache(folder: Path, source: str, err: OSError) -> str:
    """The one-line message for a weights cache folder that cannot be created or written."""
    return (f"{folder}: cannot store the {source} weights there ({err.strerror or err}); set TORCH_HOME to a writable "
            "folder (they go to $TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints)")


def fetch(url: str, source: str, progress: bool = True) -> tuple[Path, str]:
    """The cached copy of ``url`` (downloaded first if absent), its hash checked; ``(path, sha256)``.

    Raises:
        CheckpointError: the download failed (the message names the URL and where to put the file
            by hand), the cache folder cannot be created or written (the message names it and
            ``TORCH_HOME``), or the file's sha256 does not fit the hash in its name.
    """
    path = cache_dir() / os.path.basename(urlparse(url).path)
    if not path.is_file():
        match = HASH_IN_NAME.search(path.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a read-only home (docker --user, cluster accounts)
            raise CheckpointError(unwritable_cache(path.parent, source, err)) from None
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None,
                                           progress=progress)
        except RuntimeError as err:  # torch.hub's hash check of the download
            raise CheckpointError(f"{url}: the downloaded file is not the official one ({err}); "
                                  "nothing was saved") from None
        except OSError as err:  # no network, DNS, HTTP errors (urllib's are OSErrors)
            if err.filename is not None and not isinstance(err, URLError):  # a local file: the cache folder's fault
                raise CheckpointError(unwritable_cache(path.parent, source, err)) from None
            reason = getattr(err, "reason", None) or err
            raise CheckpointError(f"cannot download the {source} weights from {url} ({reason}). Without network "
                                  f"access, download that file elsewhere and put it at {path} (set TORCH_HOME to "
                                  "change the folder), then run the same command again") from None
    return path, verify_hash(path, source)


def unknown_weights(name_or_path: str, backbone: bool = True) -> str:
    """The message for weights that are neither a file nor a name of official weights: the names
    there are (``backbone``: ``imagenet`` too, a name of ``--backbone-weights``)."""
    names = ", ".join(DETECTOR_URLS) + ("; imagenet for --backbone-weights" if backbone else "")
    return f"{name_or_path}: no such file, nor a name of official weights ({names})"


def weights_file(name_or_path: str, depth: str | None = None, progress: bool = True) -> tuple[Path, str]:
    """``(file, sha256)`` of ``--weights``/``--backbone-weights``: a name (``coco``, ``coco-v2``;
    ``imagenet`` with the ResNet ``depth``) fetched into the cache, or a path to a file.

    Raises:
        CheckpointError: no such file, a failed download, a hash that does not fit.
    """
    name = name_or_path.lower()
    if name in DETECTOR_URLS:
        return fetch(DETECTOR_URLS[name], name, progress)
    if name == "imagenet":
        if depth not in IMAGENET_URLS:
            raise CheckpointError(f"no ImageNet weights for backbone {depth!r} (known: {', '.join(IMAGENET_URLS)})")
        return fetch(IMAGENET_URLS[depth], f"ImageNet {depth}", progress)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise CheckpointError(unknown_weights(name_or_path))
    return path, sha256_of(path)


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a torchvision ResNet or RegNet classification state_dict (ImageNet) into ``model.backbone.body``;
    its ``fc`` layer is left out, the FPN and heads keep their fresh initialisation.

    Raises:
        CheckpointError: unreadable file, or keys/shapes that do not fit the ResNet body.
    """
    state = read_file(path)
    body = model.backbone.body
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a classification state_dict (values must all be tensors)")
    own = body.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path}: tensor shapes do not fit the {model.config.arch} backbone: {_few(bad)}")
    result = body.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: not a backbone for {model.config.arch} (missing: {_few(missing) or '-'}; "
                              f"unexpected: {_few(list(result.unexpected_keys)) or '-'})")


def read_weights(path_or_state_dict: Any, source: str | None = None) -> tuple[dict[str, Any], str]:
    """``(the dict, its name for messages)`` of a weights file (read with ``files.read_file``) or
    of a dict given as it is; ``source`` names it (default: the path, or "state_dict")."""
    if isinstance(path_or_state_dict, dict):
        return path_or_state_dict, source or "state_dict"
    if not isinstance(path_or_state_dict, (str, os.PathLike)):
        raise CheckpointError(f"weights: a file path or a state_dict, not a {type(path_or_state_dict).__name__}")
    return read_file(path_or_state_dict), source or str(path_or_state_dict)


# torchvision's detection reference scripts (references/detection/train.py) save
# {"model": state_dict, "optimizer", "lr_scheduler", "args" (argparse.Namespace), "epoch"[, "scaler"]}
REFERENCE_ENTRY = "model"


def is_state_dict(obj: Any) -> bool:
    """True for a non-empty dict of tensors (a bare ``state_dict``)."""
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def model_entry(obj: dict[str, Any], name: str) -> tuple[dict[str, Any], str, str | None]:
    """``(state_dict, its name for messages, a note or None)`` of a torchvision weights dict (not
    our checkpoint): a bare state_dict as it is (no note); a checkpoint of torchvision's detection
    reference scripts (not a state_dict, its ``REFERENCE_ENTRY`` one) gives that entry, named
    "NAME's 'model' entry", and a note saying so and what else the file holds (not used)."""
    entry = obj.get(REFERENCE_ENTRY) if isinstance(obj, dict) else None
    if is_state_dict(obj) or not is_state_dict(entry):
        return obj, name, None
    epoch = obj.get("epoch")
    saved = f", saved after epoch {epoch}" if isinstance(epoch, int) and not isinstance(epoch, bool) else ""
    rest = [str(k) for k in obj if k != REFERENCE_ENTRY]
    unused = f"; {', '.join(rest)} not used" if rest else ""
    return entry, f"{name}'s {REFERENCE_ENTRY!r} entry", (
        f"{name}: a checkpoint of torchvision's detection reference scripts{saved}: its {REFERENCE_ENTRY!r} entry "
        f"loaded{unused}")


def load_torchvision_state(model: nn.Module, state: Any, name: str) -> list[str]:
    """``load_state`` of a torchvision state_dict, then the FrozenBatchNorm eps torchvision's file
    runs with (``torchvision_eps``); returns the skipped keys."""
    skipped = load_state(model, state, name)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        set_frozen_bn_eps(model, torchvision_eps(cfg.arch, cfg.norm, cfg.frozen_bn_eps))
    return skipped


def load_torchvision_weights(model: nn.Module, path_or_state_dict: Any, *, source: str | None = None) -> list[str]:
    """Load a bare torchvision RetinaNet state_dict (a file or the dict), or the ``model`` entry of
    a torchvision reference-script checkpoint (``model_entry``: said in a ``UserWarning``), into
    ``model``; a different class count skips the final classification conv.

    The FrozenBatchNorm eps becomes ``torchvision_eps`` (0 for the v1 COCO file in a frozen-BN
    ``resnet50_fpn``, as torchvision's ``overwrite_eps`` does); ``frozen_bn_eps_of`` reads it back.

    Args:
        model: a ``RetinaNet``.
        path_or_state_dict: file path or its dict (a bare state_dict or a reference-script checkpoint).
        source: name used in error messages (defaults to the path).
    Returns:
        keys that were skipped (re-initialised), empty when everything loaded.
    Raises:
        CheckpointError: unreadable file, or missing/unexpected/mis-shaped keys.
    """
    state, name, note = model_entry(*read_weights(path_or_state_dict, source))
    skipped = load_torchvision_state(model, state, name)
    if note:
        warnings.warn(note, stacklevel=2)
    return skipped


def load_state(model: nn.Module, state: Any, name: str) -> list[str]:
    """Load a bare ``state_dict`` into ``model`` (no eps change); returns the skipped keys: the
    classification conv when the class count differs, re-initialised.

    Raises:
        CheckpointError: not a state_dict, or missing/unexpected/mis-shaped keys, naming ``name``.
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{name}: not a model state_dict (values must all be tensors; {_NOT_WEIGHTS})")
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
    return skipped
