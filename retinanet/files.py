"""Files every output goes through, below ``model``, ``data`` and ``engine``: atomic writes, the
``--out`` check, reading a torch weights file safely, file hashes.

Every output file (checkpoints, ``results.csv``, ``metrics.json``, ``config.yaml``, ``classes.json``,
``eval.json``, ``predictions.json``, the ONNX file) goes through ``write_atomic``: a temporary file
in the same folder, fsync, ``os.replace``, with the mode the umask gives any new file (0644 under
umask 022). ``check_output_path`` is the first thing ``train``/``eval``/``predict``/``export`` do
with ``--out``. ``read_file`` loads any torch file with ``weights_only=True``; what our checkpoint
holds is ``retinanet.engine.runtime.checkpoint``'s business, torchvision's files
``retinanet.model.weights``'.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from retinanet.errors import CheckpointError, RetinaNetError

def umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, content: bytes | str | Callable[[IO[bytes]], Any]) -> Path:
    """Replace ``path`` with ``content`` in one step: write a temporary file in the same folder,
    fsync it, give it the mode a new file gets (``0o666 & ~umask``; ``mkstemp`` makes 0600), then
    ``os.replace`` it over ``path`` (creating the folder if needed).

    Args:
        path: the file to write.
        content: bytes, text (written as UTF-8), or a function that writes to a binary file object.
    Returns:
        ``path`` as a ``Path``. On any failure (also Ctrl-C) the temporary file is removed and an
        existing ``path`` is left as it was.
    Raises:
        RetinaNetError: the file system refused (a full disk, no permission, ...): the message
            names the file and the reason, and says the previous version is intact.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            kept = "the previous version is left as it was" if path.exists() else "nothing was written"
            raise RetinaNetError(f"{path}: cannot be written ({err.strerror or err}); {kept}") from err
        raise
    return path


def check_output_path(path: str | os.PathLike, *, folder: bool, option: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be written: a folder (``folder=True``: it or the
    nearest existing folder above it is writable) or a file (not an existing folder; its folder
    writable). Nothing is created.

    Raises:
        RetinaNetError: naming ``option``, the path and why (a file where a folder is needed or
            the other way round, a file on the way, no write permission).
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise RetinaNetError(f"{option} {path}: exists and is not a folder (give a folder name)")
    if not folder and path.is_dir():
        raise RetinaNetError(f"{option} {path}: is a folder (give a file name)")
    parent = path if folder else path.parent
    nearest = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not nearest.is_dir():
        raise RetinaNetError(f"{option} {path}: cannot be created: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise RetinaNetError(f"{option} {path}: cannot write into {nearest} (permission denied or read-only)")
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
