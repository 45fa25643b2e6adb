"""What a resume may change: one rule, one table.

A resume continues the run it names. ``RESUME_RULES`` classifies every setting of the run's
configs (``ModelConfig``, ``DataConfig``, ``TrainConfig``) and the two things a run is that no
config field holds (its class map, its process count):

- ``FIXED``: the checkpoint's tensors depend on it (the layers' shapes, the optimizer's state):
  another value cannot continue this checkpoint at all;
- ``DEFINES``: it changes what the run is (its data, model, batches or schedule): another value is
  refused unless ``--resume-allow SETTING`` names it; the log then names the change and
  ``config.yaml`` records it in a comment (which epochs ran with the old value);
- ``MAY_CHANGE``: another value is taken and said aloud in the log (epochs to extend a multistep
  schedule, workers, device, logging);
- ``RECORDED``: what the run recorded (the start file's sha256): the checkpoint's value is kept.

``check_resume`` compares the checkpoint's stored settings with this run's, in that one place.
A new setting is one line in ``RESUME_RULES`` (a test fails for a config field without one).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retinanet.config import SECTIONS, DataConfig, ModelConfig, TrainConfig, from_dict
from retinanet.engine.runtime.checkpoint import model_config_of
from retinanet.errors import RetinaNetError

FIXED = "fixed"
DEFINES = "defines the run"
MAY_CHANGE = "may change"
RECORDED = "recorded"
NOT_COMPARED = "not compared"  # ``resume`` itself

CLASS_MAP = "class_map"  # settings no config field holds
WORLD_SIZE = "world_size"


def _epochs(stored_train: Mapping[str, Any]) -> str:
    """``epochs`` extends a multistep schedule without changing its past; the cosine curve is
    drawn over all epochs, so another count changes the lr of every step still to come."""
    return DEFINES if stored_train.get("scheduler") == "cosine" else MAY_CHANGE


Rule = str | Callable[[Mapping[str, Any]], str]  # a kind, or a function of the stored train config giving one

RESUME_RULES: dict[str, Rule] = {
    # model: the weights' shapes, the inputs and the loss
    "arch": FIXED, "num_classes": FIXED, "fpn_channels": FIXED, "head_convs": FIXED, "norm": FIXED,
    "trainable_backbone_layers": FIXED,  # the optimizer's parameter list
    "frozen_bn_eps": DEFINES, "box_loss": DEFINES, "anchor_sizes": DEFINES, "min_size": DEFINES, "max_size": DEFINES,
    # post-processing: only the evaluations (and so best.pt's choice) see it
    "score_thresh": MAY_CHANGE, "nms_thresh": MAY_CHANGE, "detections_per_img": MAY_CHANGE, "topk_candidates": MAY_CHANGE,
    # data: which images and boxes, how they are augmented and batched
    "root": DEFINES, "format": DEFINES, "years": DEFINES, "train_split": DEFINES, "val_split": DEFINES,
    "classes": DEFINES, "val_fraction": DEFINES, "split_seed": DEFINES, "exif": DEFINES, "train_difficult": DEFINES,
    "train_sizes": DEFINES, "hflip_prob": DEFINES, "photometric": DEFINES, "iou_crop": DEFINES,
    "aspect_grouping": DEFINES, "synthetic_train": DEFINES, "synthetic_val": DEFINES, "synthetic_size": DEFINES,
    "crop": DEFINES,
    "skip_bad": MAY_CHANGE, "max_image_pixels": MAY_CHANGE, "workers": MAY_CHANGE,
    # training: batches and schedule
    "batch_size": DEFINES, "optimizer": FIXED, "lr": DEFINES, "momentum": DEFINES, "weight_decay": DEFINES,
    "warmup_iters": DEFINES, "warmup_factor": DEFINES, "scheduler": DEFINES, "lr_steps": DEFINES, "lr_gamma": DEFINES,
    "clip_grad_norm": DEFINES, "ema": DEFINES, "ema_decay": DEFINES, "ema_ramp_iters": DEFINES, "seed": DEFINES,
    "sync_bn": DEFINES, "weights": DEFINES, "backbone_weights": DEFINES, "epochs": _epochs,
    "warmup_max_fraction": DEFINES, "time": DEFINES, "max_steps": DEFINES,  # the --time fit is the schedule
    "time_fitted": RECORDED,  # a resumed --time run keeps the schedule it fitted (no new measurement)
    "start_sha256": RECORDED, "resume": NOT_COMPARED,
    "out": MAY_CHANGE, "amp": MAY_CHANGE, "channels_last": MAY_CHANGE, "device": MAY_CHANGE,
    "eval_every": MAY_CHANGE, "print_every": MAY_CHANGE, "tensorboard": MAY_CHANGE, "max_bad_steps": MAY_CHANGE, "coco_backend": MAY_CHANGE,
    # no config field
    CLASS_MAP: DEFINES, WORLD_SIZE: DEFINES,  # processes x batch size images per step
}
ALLOWABLE = tuple(name for name, rule in RESUME_RULES.items() if rule not in (FIXED, RECORDED, NOT_COMPARED))


def resume_setting(name: str) -> str:
    """A ``--resume-allow`` name: a setting (``batch_size`` or ``batch-size``) a resume may be
    allowed to change.

    Raises:
        RetinaNetError: another name, listing those that are accepted.
    """
    key = name.strip().replace("-", "_")
    if key in ALLOWABLE:
        return key
    why = (f"{key} cannot change on resume: the checkpoint's tensors depend on it" if RESUME_RULES.get(key) == FIXED
           else f"unknown setting {name!r}")
    raise RetinaNetError(f"--resume-allow: {why}; one of {', '.join(ALLOWABLE)}")


@dataclass
class ResumeCheck:
    """What ``check_resume`` found: the lines to log, the changes allowed by ``--resume-allow``
    (for ``config.yaml``'s comment), and the train settings to take from the checkpoint."""

    lines: list[str]
    allowed: list[str]
    recorded: dict[str, Any]


def _plain(value: Any) -> Any:
    return tuple(_plain(v) for v in value) if isinstance(value, list | tuple) else value


def _stored(ck: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The checkpoint's settings as one flat ``{setting: value}``: its configs read as the
    dataclasses read them (defaults for fields older checkpoints lack), its class map and process count."""
    config = ck.get("config") or {}
    values: dict[str, Any] = dataclasses.asdict(model_config_of(ck, path))
    for name in ("data", "train"):
        values |= dataclasses.asdict(from_dict(SECTIONS[name], dict(config.get(name) or {}), source=str(path)))
    values[CLASS_MAP] = ck.get("class_map")
    values[WORLD_SIZE] = ck.get("world_size")  # None: written before it was recorded
    return {k: _plain(v) for k, v in values.items()}


def _show(value: Any) -> str:
    if isinstance(value, dict):  # a class map
        return "{" + ", ".join(f"{n}: {i}" for n, i in value.items()) + "}"
    return " ".join(map(str, value)) if isinstance(value, tuple) else repr(value) if isinstance(value, str) else str(value)


def _class_map_change(old: dict[str, int], new: dict[str, int]) -> str:
    """``old -> new`` for two class maps, the differences first."""
    ids = sorted(set(old.values()) | set(new.values()))
    by_id = ({i: n for n, i in old.items()}, {i: n for n, i in new.items()})
    diff = [f"id {i}: {by_id[0].get(i, '-')} -> {by_id[1].get(i, '-')}" for i in ids if by_id[0].get(i) != by_id[1].get(i)]
    count = f"{len(old)} classes -> {len(new)}" if len(old) != len(new) else f"{len(old)} classes under other names"
    return f"{count} ({'; '.join(diff[:10])}{' ...' if len(diff) > 10 else ''})"


PATH_SETTINGS = ("root", "classes", "val_split")  # data settings that may name a file or folder


def _path_value(name: str, value: Any) -> Any:
    """A path setting as an absolute path (``val_split`` only when it names a .txt/.json file); else as it is."""
    if not isinstance(value, str) or (name == "val_split" and not value.endswith((".txt", ".json"))):
        return value
    return os.path.abspath(os.path.expanduser(value))


def absolute_paths(data_cfg: DataConfig) -> DataConfig:
    """``data_cfg`` with its paths absolute (``PATH_SETTINGS``): the run's config.yaml then names
    the same files from whatever folder ``--config RUN/config.yaml`` is run (relative, it named
    another folder's ``data``, or nothing)."""
    return dataclasses.replace(data_cfg, **{k: _path_value(k, getattr(data_cfg, k)) for k in PATH_SETTINGS})


def check_resume(ck: Mapping[str, Any], path: Path, model_cfg: ModelConfig, data_cfg: DataConfig, cfg: TrainConfig,
                 class_map: dict[str, int], world_size: int, allow: Iterable[str] = ()) -> ResumeCheck:
    """Compare the settings of checkpoint ``ck`` (at ``path``) with this run's, by ``RESUME_RULES``.

    Returns:
        a ``ResumeCheck``: one log line for the settings that changed and may (``MAY_CHANGE``),
        one for those ``allow`` lets change, and the ``RECORDED`` values to keep.
    Raises:
        RetinaNetError: settings that define the run differ and ``allow`` does not name them, or
            settings the checkpoint's tensors depend on differ: each listed ``old -> new``, with
            the way out (a new run that starts from the checkpoint with ``--weights``).
    """
    allow = {resume_setting(a) for a in allow}
    stored = _stored(ck, path)
    now = {k: _plain(v) for k, v in (dataclasses.asdict(model_cfg) | dataclasses.asdict(data_cfg)
                                       | dataclasses.asdict(cfg)).items()}
    now |= {CLASS_MAP: dict(class_map), WORLD_SIZE: world_size}
    found: dict[str, list[tuple[str, str]]] = {FIXED: [], DEFINES: [], MAY_CHANGE: []}  # kind: [(setting, change)]
    allowed, recorded = [], {}
    for name, rule in RESUME_RULES.items():
        kind = rule(stored) if callable(rule) else rule
        old, new = stored.get(name), now.get(name)
        if name in PATH_SETTINGS:  # a run stored with a relative path, resumed from the folder it ran in: the same
            old, new = _path_value(name, old), _path_value(name, new)
        if kind == NOT_COMPARED or old == new or (name == WORLD_SIZE and old is None):
            continue
        if kind == RECORDED:
            recorded[name] = old
            continue
        change = (f"class map: {_class_map_change(old or {}, new)}" if name == CLASS_MAP
                  else f"{name} {_show(old)} -> {_show(new)}")
        if kind == DEFINES and name in allow:
            allowed.append(change)
        else:
            found[kind].append((name, change))
    if found[FIXED] or found[DEFINES]:
        lines = [f"  {c} (cannot change: the checkpoint's tensors depend on it)" for _, c in found[FIXED]]
        lines += [f"  {c}" for _, c in found[DEFINES]] + [f"  {c} (allowed by --resume-allow)" for c in allowed]
        unless = (f"; or, to continue this run with the change, --resume-allow {' '.join(n for n, _ in found[DEFINES])}"
                  if found[DEFINES] and not found[FIXED] else "")
        raise RetinaNetError(
            f"--resume {path}: a resume continues the run it names, and these settings differ from that run's:\n"
            + "\n".join(lines) + f"\nresume with the run's own settings (leave these options out), or start a new run "
            f"from its weights with --weights {path} (and another --out){unless}")
    lines = []
    if stored.get(WORLD_SIZE) is None:
        lines.append(f"resume: {path.name} does not record its process count (written before checkpoints did), so "
                     f"this run's {world_size} process(es) cannot be checked against it; the effective batch is "
                     f"{world_size} x batch_size")
    if found[MAY_CHANGE]:
        lines.append(f"resume: settings changed from the checkpoint's: {', '.join(c for _, c in found[MAY_CHANGE])}")
    if allowed:
        lines.append(f"resume: --resume-allow: the run continues with {', '.join(allowed)}")
    return ResumeCheck(lines, allowed, recorded)


def changes_comment(changes: list[str]) -> str:
    """The comment ``config.yaml`` starts with when a resume changed settings that define the run
    (``--resume-allow``): the values it holds are the latest, not those of every epoch."""
    if not changes:
        return ""
    return ("this run was resumed with settings changed by --resume-allow; the values below hold from the epoch named,\n"
            "the epochs before it ran with the old ones:\n" + "\n".join(f"  {c}" for c in changes))
