"""The checkpoint file format and reading/writing weights files, below ``model`` and ``engine``.

Our checkpoint is a dict::

    {"format": "retinanet-checkpoint", "version": 1,
     "model": state_dict, "config": {"model": {...}, "data": {...}, "train": {...}},
     "class_map": {"name": id, ...} or None, "epoch": int, ... training state ...}

An official torchvision file is a bare state_dict. Files are written atomically and read with
``weights_only=True``. Building a model from a file is ``retinanet.engine.checkpoint.load_model``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from retinanet.errors import CheckpointError

FORMAT = "retinanet-checkpoint"
VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (plus ``format`` and ``version``) to ``path`` atomically: a temporary
    file in the same folder, then rename.

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


NOT_WEIGHTS = "neither our checkpoint nor a torchvision state_dict"
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip format; its legacy pickle format


def read_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or state_dict file with ``weights_only=True``.

    Raises:
        CheckpointError: naming the file when it is missing, empty, not a torch file (a text
            file, say), corrupt, holds objects other than tensors and plain types, or holds
            something other than a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: empty file, not a checkpoint ({NOT_WEIGHTS})")
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(f"{path}: not a checkpoint: not a PyTorch file at all ({NOT_WEIGHTS})")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's text here suggests weights_only=False: never do that
        raise CheckpointError(f"{path}: not a checkpoint: it holds Python objects other than tensors and "
                              f"plain types ({NOT_WEIGHTS}), which are not loaded") from None
    except Exception as err:  # torch raises many kinds for a truncated or corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch weights file, truncated or corrupt ({first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict or a retinanet checkpoint, found {type(obj).__name__}")
    return obj


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_checkpoint(obj: dict[str, Any]) -> bool:
    """True for our checkpoint format, False for a bare state_dict."""
    return obj.get("format") == FORMAT and "model" in obj
