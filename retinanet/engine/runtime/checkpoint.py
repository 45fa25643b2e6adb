"""Our checkpoint format, both ways: what is saved, how it is read back, and models from it.

A checkpoint is a dict written by ``torch.save`` (atomically) and read with ``weights_only=True``::

    {"format": "retinanet-checkpoint", "version": 1,
     "model": state_dict, "ema": state_dict (with EMA: what eval/predict/export load),
     "config": {"model": {...}, "data": {...}, "train": {...}},   # asdict of the configs
     "class_map": {"name": id, ...} or None,
     training state: "optimizer", "scaler", "ema_module", "epoch", "iteration", "best_ap",
     "best_epoch", "rng", "history" and, in ``interrupted.pt``, "epoch_progress"}

An official torchvision file is a bare state_dict, a checkpoint of torchvision's detection reference
scripts a dict whose ``model`` entry is one (``retinanet.model.weights.model_entry``). Legacy quirks of
older checkpoints are upgraded on reading, each by one named function (``legacy_frozen_bn_eps``).
Which checkpoint ``--resume`` names is the run folder's business (``retinanet.engine.runtime.run_dir``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from retinanet.config import SECTIONS, ModelConfig, check_limits, from_dict
from retinanet.engine.runtime.device import usable_device
from retinanet.errors import CheckpointError
from retinanet.files import ReadOnce, check_free_space, megabytes, read_file, write_atomic
from retinanet.model import build_model
from retinanet.model.anchors import NUM_ANCHORS
from retinanet.model.weights import (CLS_KEYS, DETECTOR_URLS, load_state, load_torchvision_state, model_entry,
                                     read_weights, torchvision_eps, unknown_weights, weights_file)

FORMAT = "retinanet-checkpoint"
VERSION = 1


def is_checkpoint(obj: dict[str, Any]) -> bool:
    """True for our checkpoint format, False for a bare state_dict."""
    return obj.get("format") == FORMAT and "model" in obj


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (plus ``format`` and ``version``) to ``path`` atomically (``write_atomic``).

    A crash or Ctrl-C during the write leaves the previous file intact.
    """
    state = {"format": FORMAT, "version": VERSION, **state}
    return write_atomic(path, lambda f: torch.save(state, f))


def read_checkpoint(path: str | os.PathLike, content: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our checkpoint at ``path`` (``content``: the file's dict, already read; not read again).

    Raises:
        CheckpointError: unreadable (``files.read_file``), not our format (a bare state_dict), or of
            a newer version (``check_version``).
    """
    obj = read_file(path) if content is None else content
    if not is_checkpoint(obj):
        raise CheckpointError(f"{path}: not a retinanet checkpoint (no format {FORMAT!r}): a bare state_dict "
                              "cannot be resumed; start a run from it with --weights")
    check_version(obj, path)
    return obj


# what a resume needs of a checkpoint to continue its run (``training_checkpoint`` writes them all)
TRAINING_KEYS = ("model", "optimizer", "scaler", "epoch", "iteration", "best_ap", "best_epoch", "rng")


def check_resumable(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume from our checkpoint ``obj`` when it lacks a part of the training state
    (``TRAINING_KEYS``): one kept for inference only, or cut down to share.

    Raises:
        CheckpointError: naming the file, what it lacks and ``--weights`` to start a new run from it.
    """
    missing = [k for k in TRAINING_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: holds no training state to resume ({', '.join(missing)} missing: a checkpoint "
                              "kept for inference, or cut down); start a new run from its weights with --weights "
                              f"{path} (and another --out)")


def check_version(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse our checkpoint ``obj`` when this version cannot read it: its ``version`` is above
    ``VERSION`` (written by a newer retinanet, whose layout and settings this one does not know).
    Checked before anything else of it is read (its stored configs included).

    Raises:
        CheckpointError: naming the file, its version and the way out.
    """
    version = obj.get("version", VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version <= VERSION:
        return
    raise CheckpointError(f"{path}: checkpoint version {version!r}, written by a newer retinanet; this one reads "
                          f"version {VERSION} and older: upgrade retinanet to read it")


def check_weights_given(path: str | os.PathLike) -> None:
    """Refuse ``path`` given as weights to run (``eval``/``predict``/``export --weights``,
    ``Detector.load``) that is neither a file or folder nor a name of official weights: the
    message names the names (a misspelt ``cocoo`` was "no such file", while ``train`` named them).

    Raises:
        CheckpointError: ``weights.unknown_weights``'s message.
    """
    if str(path).lower() not in DETECTOR_URLS and not Path(path).expanduser().exists():
        raise CheckpointError(unknown_weights(str(path), backbone=False))


def stored_config(path: str | os.PathLike, once: ReadOnce | None = None) -> dict[str, dict[str, Any]] | None:
    """The configs a checkpoint stores, ``{"model": {...}, "data": {...}, "train": {...}}`` (each
    section a dict, empty where absent), or None for a file without them. ``once``: read through
    it, so that the step that loads the weights next takes the content instead of reading again."""
    obj = read_file(path) if once is None else once.read(path)
    if is_checkpoint(obj):  # a newer version's settings would read as unknown options
        check_version(obj, path)
    return _stored_sections(obj)


def _stored_sections(obj: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    stored = obj.get("config")
    if not isinstance(stored, dict):
        return None
    return {k: dict(stored.get(k) or {}) for k in SECTIONS}


def trained_crop(stored: dict[str, dict[str, Any]] | None) -> int | None:
    """The crop side a checkpoint's run trained on (``train --crop PX``), from its ``stored_config``;
    None for a run without crops or a file that records none (a torchvision file)."""
    crop = ((stored or {}).get("data") or {}).get("crop")
    return int(crop) if crop else None


def training_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                        ema: torch.optim.swa_utils.AveragedModel | None, **state: Any) -> dict[str, Any]:
    """What ``last.pt``/``best.pt``/``interrupted.pt`` hold: the states of ``model``, ``optimizer``,
    ``scaler`` and ``ema`` (its weights as ``ema``, what eval/predict/export load, and the
    averaging module with its update count as ``ema_module``, to resume), plus ``state`` (plain
    types and tensors: epoch, iteration, best_ap, best_epoch, config, class_map, rng, history)."""
    s = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), **state}
    if ema is not None:
        s["ema"] = ema.module.state_dict()
        s["ema_module"] = ema.state_dict()
    return s


def checkpoint_bytes(model: torch.nn.Module, optimizer: str, momentum: float, ema: bool) -> int:
    """About the size of a ``training_checkpoint`` of ``model`` (before its first step, when the
    optimizer holds no state yet): the model's state, the EMA's copy of it, and the optimizer's
    buffers per trainable parameter (AdamW: 2; SGD with momentum: 1), and 1 MB for the rest (config,
    history, RNG states). At least the size of the ``last.pt`` written after the first epoch and at
    most 1 MB more (ResNet-18/50 and RegNetX-400MF bodies, SGD and AdamW, with and without EMA, a
    partly frozen body: ``tests/engine/runtime/test_disk.py``)."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    buffers = 2 if optimizer == "adamw" else int(optimizer == "sgd" and momentum != 0)
    return state * (1 + ema) + trainable * buffers + 1_000_000


def check_checkpoint_space(out: Path, size: int) -> None:
    """Refuse a run whose folder's disk cannot hold its checkpoints: ``last.pt`` and ``best.pt`` where
    they do not exist yet (``size`` bytes each), plus the temporary copy of one while it is written
    (``write_atomic``). Without it the run would train until its first checkpoint and fail there.

    Raises:
        RetinaNetError: naming the folder, the free and the needed space (``files.check_free_space``).
    """
    new = [name for name in ("last.pt", "best.pt") if not (out / name).exists()]
    what = (f"this run's checkpoints ({' and '.join(new) or 'the replaced last.pt and best.pt'} of about "
            f"{megabytes(size)} each, plus a temporary copy while one is written)")
    check_free_space(out, size * (len(new) + 1), what)


def load_training_state(ck: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, ema: torch.optim.swa_utils.AveragedModel | None) -> None:
    """Load the states ``training_checkpoint`` saved into ``model``, ``optimizer``, ``scaler`` and ``ema``."""
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scaler.load_state_dict(ck["scaler"])
    if ema is not None and "ema_module" in ck:
        ema.load_state_dict(ck["ema_module"])


# --- legacy quirks: one named upgrade each ---------------------------------------------------------


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


def model_config_of(obj: dict[str, Any], path: str | os.PathLike = "checkpoint") -> ModelConfig:
    """The ``ModelConfig`` stored in one of our checkpoints (upgraded: ``legacy_frozen_bn_eps``
    for those written before ``frozen_bn_eps`` was recorded)."""
    try:
        values = dict(obj["config"]["model"])
        if "frozen_bn_eps" not in values:
            values["frozen_bn_eps"] = legacy_frozen_bn_eps(values, dict(obj["config"].get("train") or {}))
        return from_dict(ModelConfig, values, source=str(path))
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: checkpoint holds no model config") from None


# --- models from weights files ---------------------------------------------------------------------


def _torchvision_config(state: dict[str, Any], path: str | os.PathLike, norm: str | None) -> ModelConfig:
    """The ``ModelConfig`` of a bare torchvision RetinaNet state_dict (``path``: its name, a file's
    entry as ``model_entry`` names it): v1 or v2 (v2 heads have GroupNorm layers), the class count
    from the classification layer, and the FrozenBatchNorm eps it runs with in a model of ``norm``
    (None: torchvision's ``frozen_bn``)."""
    key = CLS_KEYS[0]
    if key not in state:
        what = "not" if str(path).endswith(" entry") else "neither our checkpoint nor"
        raise CheckpointError(f"{path}: {what} a torchvision RetinaNet state_dict (no '{key}')")
    arch = "resnet50_fpn_v2" if any(k.startswith("head.classification_head.conv.0.1.") for k in state) else "resnet50_fpn"
    eps = torchvision_eps(arch, norm or "frozen_bn", ModelConfig.frozen_bn_eps)
    return ModelConfig(arch=arch, num_classes=state[key].shape[0] // NUM_ANCHORS, frozen_bn_eps=eps)


def load_weights(model: torch.nn.Module, path_or_state_dict: Any, *, source: str | None = None) -> list[str]:
    """``retinanet.model.weights.load_torchvision_weights`` (same arguments, result and errors)
    that also takes our checkpoint, a file or its dict: its ``model`` weights load, the model's
    FrozenBatchNorm eps is kept (the public ``retinanet.load_weights``). A torchvision reference-script
    checkpoint's ``model`` entry loads, said in a ``UserWarning`` (``load_weights_noted``)."""
    skipped, note = load_weights_noted(model, path_or_state_dict, source=source)
    if note:
        warnings.warn(note, stacklevel=2)
    return skipped


def load_weights_noted(model: torch.nn.Module, path_or_state_dict: Any, *,
                       source: str | None = None) -> tuple[list[str], str | None]:
    """``load_weights`` without the warning: ``(skipped keys, note)``, the note (None: none) saying
    which entry of a torchvision reference-script checkpoint loaded (``model_entry``), for the log."""
    obj, name = read_weights(path_or_state_dict, source)
    if is_checkpoint(obj):
        check_version(obj, name)
        return load_state(model, obj["model"], name), None
    state, name, note = model_entry(obj, name)
    return load_torchvision_state(model, state, name), note


# settings that shape trained layers: ``load_model`` refuses overrides of them (only training may change them)
INFERENCE_FIXED = ("arch", "num_classes", "fpn_channels", "head_convs")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", channels_last: bool = False,
               once: ReadOnce | None = None, **overrides: Any):
    """``(model, class map)`` of ``load_model_and_config`` (same arguments and errors)."""
    model, class_map, _ = load_model_and_config(path, device, channels_last, once, **overrides)
    return model, class_map


def load_model_and_config(path: str | os.PathLike, device: str | torch.device = "cpu", channels_last: bool = False,
                          once: ReadOnce | None = None, **overrides: Any):
    """Build a model from our checkpoint or an official torchvision file, ready for inference.

    ``path`` may also name official weights (``coco``, ``coco-v2``: fetched once into torch.hub's
    cache, hash-checked). Our checkpoint is rebuilt with the config it stores, FrozenBatchNorm eps
    included. For a bare torchvision state_dict the arch is detected (v1/v2), the class count read
    from the classification layer and the eps is torchvision's (v1: 0); a checkpoint of torchvision's
    detection reference scripts is its ``model`` entry's, said in a ``UserWarning`` (``model_entry``). ``overrides`` replace
    ``ModelConfig`` fields (for example ``score_thresh``, ``min_size``). ``channels_last`` puts
    the model in NHWC memory layout (same results, usually faster; its batches follow). ``once``:
    the file's content an earlier step read (``stored_config``), taken instead of reading it again.

    Returns:
        (model in eval mode on ``device``, class map ``{"name": id}`` or None for a bare file, the configs
        the file stores as ``stored_config`` gives them, None for a bare file: the file is read once)
    """
    device = usable_device(device)  # before the file is read: a device this machine lacks is named first
    check_limits(overrides, "model", "model settings")  # min_size=0 and the like, as the command line refuses them
    check_weights_given(path)
    # a name of official weights: fetched once; a path: "~" is the home folder (Detector.load("~/m.pt"))
    path = weights_file(str(path))[0] if str(path).lower() in DETECTOR_URLS else Path(path).expanduser()
    obj = once.take(path) if once is not None else None
    if obj is None:
        obj = read_file(path)
    if is_checkpoint(obj):
        check_version(obj, path)
        cfg, class_map, state = model_config_of(obj, path), obj.get("class_map"), obj.get("ema") or obj["model"]
        stored, name, note = _stored_sections(obj), str(path), None
    else:
        state, name, note = model_entry(obj, str(path))
        cfg, class_map = _torchvision_config(state, name, overrides.get("norm")), None
        stored = None
    fixed = {k: (overrides[k], getattr(cfg, k)) for k in INFERENCE_FIXED if k in overrides and overrides[k] != getattr(cfg, k)}
    if fixed:  # a model ready for inference keeps its trained layers: another class count would re-initialise one
        raise CheckpointError(f"{path}: " + "; ".join(f"{k} {new} given, but the weights were trained with {old}"
                                                      for k, (new, old) in fixed.items())
                              + ": a loaded model keeps them (to train for other classes: retinanet train --weights FILE)")
    model = build_model(**{**cfg.__dict__, **overrides})
    load_state(model, state, name)
    if note:
        warnings.warn(note, stacklevel=3)  # at the command's (or Detector.load's) call
    model = model.eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, class_map, stored

