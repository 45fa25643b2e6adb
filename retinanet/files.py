"""Files every output goes through, below ``model``, ``data`` and ``engine``: atomic writes, the
``--out`` check, reading a torch weights file safely, file hashes.

Every output file (checkpoints, ``results.csv``, ``metrics.json``, ``config.yaml``, ``classes.json``,
``eval.json``, ``predictions.json``, the ONNX file) goes through ``write_atomic``: a temporary file
in the same folder, fsync, ``os.replace``, with the mode the umask gives any new file (0644 under
umask 022). A ``best.pt`` equal to the ``last.pt`` just written is that file again (``link_atomic``: a
hard link, also replaced in one step), not a second write of the same bytes. ``check_output_path`` is the first thing ``train``/``eval``/``predict``/``export`` do
with ``--out``. ``read_file`` loads any torch file with ``weights_only=True`` (``ReadOnce`` hands one
read from one step of a command to the next); what our checkpoint holds is ``retinanet.engine.runtime.checkpoint``'s business, torchvision's files
``retinanet.model.weights``'.

An output folder is held by one process at a time (``hold_folder``: an advisory ``flock`` on
``FOLDER/.lock``, released by the OS when the process ends, however it ends; on Windows a
``msvcrt.locking`` byte lock, which Windows also releases when the process ends); a write that was
killed leaves its temporary file, which ``remove_stale_temporaries`` clears under that lock.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import os
import pickle
import re
import secrets
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from retinanet.errors import CheckpointError, RetinaNetError

# The folder lock (hold_folder): flock where there is fcntl (POSIX), msvcrt.locking on Windows.
try:
    import fcntl
except ImportError:
    fcntl = None
try:
    import msvcrt
except ImportError:
    msvcrt = None

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
            if hasattr(os, "fchmod"):  # not on Windows before Python 3.13, where mode bits mean little anyway
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


def link_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` the same file as ``src`` in one step, without writing its bytes again: a hard
    link under a temporary name (``write_atomic``'s naming), then ``os.replace`` over ``dst``.

    Sound because every write of ours replaces a file (``write_atomic``) and none changes one in
    place: a later write of ``src`` gives ``src`` a new file and leaves ``dst`` as it is. Where the
    file system has no hard links (FAT, some network mounts) ``dst`` becomes a copy (``write_atomic``).

    Raises:
        RetinaNetError: the file system refused (as ``write_atomic``).
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.parent / f".{dst.name}.{secrets.token_hex(4)}.tmp"
    try:
        os.link(src, tmp)
    except OSError:
        with src.open("rb") as f:
            return write_atomic(dst, lambda out: shutil.copyfileobj(f, out, 1 << 24))
    try:
        os.replace(tmp, dst)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            kept = "the previous version is left as it was" if dst.exists() else "nothing was written"
            raise RetinaNetError(f"{dst}: cannot be written ({err.strerror or err}); {kept}") from err
        raise
    return dst


# write_atomic's temporaries: mkstemp(prefix=".NAME.", suffix=".tmp") puts 8 of [a-z0-9_] between
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
LOCK_FILE = ".lock"


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Delete the temporary files ``write_atomic`` leaves when it is killed mid-write
    (``.last.pt.k3j_x9a2.tmp``) for the files ``names`` in ``folder``; only call it while holding
    the folder (``hold_folder``), when no write of ours can be under way there.

    Returns:
        one "NAME (SIZE)" per file removed.
    """
    names, removed = set(names), []
    for path in sorted(Path(folder).glob(".*.tmp")):
        match = TEMPORARY.match(path.name)
        if match and match["name"] in names and path.is_file():
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append(f"{path.name} ({size / 1e6:.1f} MB)" if size >= 100_000 else f"{path.name} ({size} bytes)")
    return removed


# Windows locks byte ranges, and a range another process has locked cannot be read: the lock is
# taken on one byte far past the pid line, so the holder stays readable.
_WINDOWS_LOCK_AT = 1 << 30
# msvcrt.locking's errno when another process holds the byte (EDEADLOCK: Windows' name, EDEADLK elsewhere)
_LOCK_HELD = {errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)}


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on open file ``fd`` without waiting: True when taken, False when
    another process holds it. ``fcntl.flock`` (POSIX), else ``msvcrt.locking`` (Windows); where the
    platform has neither, no lock is taken (True): the run works, but a second process in the same
    folder is not refused."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:
        os.lseek(fd, _WINDOWS_LOCK_AT, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as err:
            if err.errno in _LOCK_HELD:
                return False
            raise
    return True


def _release(fd: int, locked: bool) -> None:
    """Close ``fd``, which releases its lock (Windows asks for a byte lock taken to be undone first)."""
    if locked and fcntl is None and msvcrt is not None:
        with contextlib.suppress(OSError):
            os.lseek(fd, _WINDOWS_LOCK_AT, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    os.close(fd)


def _read_start(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from the start of ``fd`` (``os.pread`` is POSIX only)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, size)


def _replace_content(fd: int, data: bytes) -> None:
    """Make ``data`` the whole content of ``fd``."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, what: str, option: str = "--out") -> Iterator[Path]:
    """Hold output folder ``folder`` for this process while the block runs: an exclusive advisory
    lock (``fcntl.flock``; on Windows ``msvcrt.locking``, ``_try_lock``) on ``FOLDER/.lock``, which
    holds this process's pid and ``what``. The OS releases it when the process ends, also when it is
    killed: a folder is never left locked.
    ``folder`` is checked (``check_output_path``) and created first; when the block ends and the
    folders this call created hold nothing but the lock (a command that failed before writing),
    they are removed again, so a failed command leaves no empty output folder behind.

    Raises:
        RetinaNetError: another process holds ``folder``: the message names its pid and command.
    """
    folder = check_output_path(folder, folder=True, option=option)
    lock = folder / LOCK_FILE
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise RetinaNetError(f"{option} {folder}: cannot create {lock.name} in it ({err.strerror or err})") from err
    locked = False
    try:
        locked = _try_lock(fd)
        if not locked:
            holder = _read_start(fd, 500).decode("utf-8", "replace").strip() or "a process that has not written its pid yet"
            raise RetinaNetError(f"{option} {folder}: in use by another process ({holder}); two runs in one folder "
                                 "overwrite each other's files: wait for it to end, stop it, or choose another "
                                 f"{option}") from None
        _replace_content(fd, f"pid {os.getpid()}: {what}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode("utf-8"))
        yield folder
        os.ftruncate(fd, 0)  # the pid of a process that no longer holds the folder is not left behind
    finally:
        if os.name == "nt":  # Windows deletes no open file: released first; one another process opened since stays
            _release(fd, locked)
        if created:
            _remove_if_only_lock(created, lock)
        if os.name != "nt":
            _release(fd, locked)  # after the removal: no other process can take a lock file that is being deleted


def _remove_if_only_lock(created: list[Path], lock: Path) -> None:
    """Remove ``lock`` and the folders ``created`` (deepest first) when they hold nothing else; a
    folder another process has written into meanwhile stays (``rmdir`` refuses it)."""
    try:
        if any(p.name != LOCK_FILE for p in created[0].iterdir()):
            return
        lock.unlink(missing_ok=True)
        for path in created:
            path.rmdir()
    except OSError:
        pass


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


def megabytes(n: int) -> str:
    """``n`` bytes for a message: "207 MB", "1.6 GB"."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def check_free_space(folder: str | os.PathLike, need: int, what: str, option: str = "--out") -> None:
    """Refuse, before any work, a ``folder`` whose disk has less than ``need`` bytes free.

    The disk is that of ``folder`` or the nearest existing folder above it. A file system that
    reports no size at all (some network and FUSE mounts) is not judged.

    Raises:
        RetinaNetError: naming ``option``, the folder, the free and the needed space and ``what``
            needs it.
    """
    folder = Path(folder)
    nearest = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    usage = shutil.disk_usage(nearest)
    if usage.total > 0 and usage.free < need:
        raise RetinaNetError(f"{option} {folder}: its disk has {megabytes(usage.free)} free, and {what} need about "
                             f"{megabytes(need)}: free some space or give another {option}")


NOT_WEIGHTS = "neither our checkpoint nor a torchvision state_dict"
# classes ``read_file`` lets ``weights_only=True`` build besides tensors and plain types: torchvision's
# detection reference scripts store their command line (``"args"``) as an ``argparse.Namespace``, a plain
# attribute bag (built with ``object.__new__`` and its ``__dict__`` filled: no code of the file's runs),
# whose values are held to the same rules
SAFE_GLOBALS = (argparse.Namespace,)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip format; its legacy pickle format
_ONNX_MAGIC = b"\x08"  # an ONNX ModelProto starts with field 1, ir_version (a varint): tag 0x08


def read_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or state_dict file with ``weights_only=True`` (``SAFE_GLOBALS`` allowed too:
    the ``argparse.Namespace`` of torchvision's reference-script checkpoints).

    Raises:
        CheckpointError: naming the file when it is missing, empty, not a torch file (a text
            file, say; an ONNX file is named as one), corrupt (torch cannot read it, or an entry fails
            the CRC-32 it was written with: ``damaged_entry``), holds objects other than tensors and
            plain types (named where torch can list them: ``refused_types``), or holds something other
            than a dict.
    """
    path = Path(path)
    if path.is_dir():
        inside = [n for n in ("best.pt", "last.pt") if (path / n).is_file()]
        raise CheckpointError(f"{path}: a folder, not a checkpoint file" + (f"; give the file, e.g. {path / inside[0]}"
                                                                            if inside else ""))
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"{path}: empty file, not a checkpoint ({NOT_WEIGHTS})")
    if not head.startswith(_TORCH_MAGIC):
        if path.suffix.lower() == ".onnx" or head.startswith(_ONNX_MAGIC):
            raise CheckpointError(f"{path}: an ONNX model (what retinanet export writes), not a checkpoint: run it with "
                                  "onnxruntime (README, \"Export to ONNX\"); give the .pt checkpoint it was exported from")
        raise CheckpointError(f"{path}: not a checkpoint: not a PyTorch file at all ({NOT_WEIGHTS})")
    try:
        with warnings.catch_warnings():  # torch's "Detected pickle protocol N" on a plain pickle file: said below
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            with _allowing(SAFE_GLOBALS):
                obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's text here suggests weights_only=False: never do that
        refused = refused_types(path) if head.startswith(_TORCH_MAGIC[0]) else []
        if refused:
            raise CheckpointError(f"{path}: not a checkpoint: it holds Python objects other than tensors and plain types "
                                  f"({', '.join(refused[:5])}), not loaded: unpickling them could run code ({NOT_WEIGHTS}; "
                                  "save the model's state_dict, alone or in a dict of plain values)") from None
        raise CheckpointError(f"{path}: not a checkpoint: a pickle that is not PyTorch weights (a plain Python pickle, "
                              f"or one holding objects other than tensors and plain types; {NOT_WEIGHTS}), "
                              "not loaded") from None
    except Exception as err:  # torch raises many kinds for a truncated or corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch weights file, truncated or corrupt ({first})") from None
    damaged = damaged_entry(path) if head.startswith(_TORCH_MAGIC[0]) else None
    if damaged:  # torch.load does not check the CRCs: altered bytes load as altered weights (0xff.. as NaN)
        raise CheckpointError(f"{path}: corrupt: the bytes of {damaged} differ from the checksum the file was written "
                              "with (damaged on disk or in a copy); use another copy, or an earlier checkpoint")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict or a retinanet checkpoint, found {type(obj).__name__}")
    return obj


def _allowing(types: tuple[type, ...]) -> contextlib.AbstractContextManager:
    """``torch.serialization.safe_globals(types)`` (torch 2.5+); on torch 2.4, which lacks it, nothing
    more is allowed: a file holding them is refused as any other object (``read_file``)."""
    allow = getattr(torch.serialization, "safe_globals", None)
    return allow(list(types)) if allow is not None else contextlib.nullcontext()


def refused_types(path: str | os.PathLike) -> list[str]:
    """The types in the pickle of the zip file ``path`` (``torch.save``'s format) that ``weights_only=True``
    does not build (``SAFE_GLOBALS`` apart), as ``module.Name``, read without building anything
    (``torch.serialization.get_unsafe_globals_in_checkpoint``); empty when torch cannot list them."""
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in SAFE_GLOBALS}
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:  # not a zip file torch reads, an older torch: the general message
        return []


def damaged_entry(path: str | os.PathLike) -> str | None:
    """The first entry of the zip file ``path`` (``torch.save``'s format) whose bytes fail the CRC-32
    stored with it, or None when every entry passes (or the file is no zip ``zipfile`` reads: not
    judged here). About 0.1 s per 100 MB, read from the page cache after ``torch.load``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return None


class ReadOnce:
    """A weights file read by one step of a command and handed to the next, so that a checkpoint
    (150 MB for ResNet-50, three times that with its optimizer and EMA) is read once per command:
    ``eval`` learns the configs it stores and then loads its weights, ``train --resume`` its
    configs and then its training state. ``read`` reads (``read_file``) and keeps the content for
    one ``take``, which gives it up: no reference stays for the rest of a run.
    """

    def __init__(self) -> None:
        self._stamp: tuple[int, int, int, int] | None = None
        self._content: dict[str, Any] | None = None

    def read(self, path: str | os.PathLike) -> dict[str, Any]:
        """``read_file(path)``, kept for ``take``.

        Raises:
            CheckpointError: as ``read_file``.
        """
        stamp = _stamp(Path(path))
        self._content = read_file(path)
        self._stamp = stamp
        return self._content

    def take(self, path: str | os.PathLike) -> dict[str, Any] | None:
        """The content ``read`` read, given up, when ``path`` is that file (under any name) and it
        has not changed since (``_stamp``); else None: the caller reads the file itself."""
        content, self._content = self._content, None
        if content is None or self._stamp is None or _stamp(Path(path)) != self._stamp:
            return None
        return content


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What tells a file from other files and from its later versions: device, inode, size,
    modification time (None: no file there)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def drop_output(stream: IO[str]) -> None:
    """Send the rest of what this process writes to ``stream`` (``sys.stdout`` or ``sys.stderr``) to the
    null device: its reader left (``| head``, the ``tee`` of a closed ssh session). Python's own last
    flush then writes nowhere instead of failing again."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, stream.fileno())
    finally:
        os.close(null)


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last
    without a word: a second ``names:`` would silently replace the first)."""


def _mapping_once(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    lines: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {lines[key]} and {line}); which one is meant cannot be known",
                    key_node.start_mark)
            lines[key] = line
        except TypeError:  # an unhashable key: construct_mapping says so
            pass
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_once)


def load_yaml(text: str) -> Any:
    """``text`` read as YAML (a ``yaml.SafeLoader``), a key given twice in one mapping refused
    (``yaml.YAMLError`` naming both lines): config files and YOLO data.yaml files."""
    return yaml.load(text, Loader=UniqueKeyLoader)
