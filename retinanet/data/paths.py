"""File names written on Windows, read here: ``\\`` separators and absolute Windows paths.

Annotations made on Windows name their files with backslashes (a COCO ``file_name`` of
``images\\train\\a.jpg``, a data.yaml ``train: images\\train``, an image list line) or as absolute
Windows paths (``C:\\Users\\me\\data\\a.jpg``, ``\\\\server\\share\\data\\a.jpg``). On a POSIX system a
backslash in a file name is almost always such a separator, and a drive letter cannot exist.
An absolute POSIX path that does not exist here (``/home/alice/data/a.jpg``, Label Studio's
``/data/upload/3/a.jpg``: written on another machine) is read as an absolute Windows path is.

``written_path`` reads a name against the folder it is relative to: as written when that exists;
else, with ``\\`` and ``/`` both separators; for an absolute Windows path, by the longest run of
its trailing folder and file names that exists under the folder (at least its base name). Every
reader uses it (COCO ``file_name``, YOLO split entries and list lines; VOC ``<filename>`` through
``base_name``); each says its repairs once per file (``repair_warnings``: a count and one
example), and names the Windows form when nothing was found (``windows_hint``).
"""

from __future__ import annotations

import re
from pathlib import Path

AS_WRITTEN = ""  # the name was read as written (found, or not found at all)
BACKSLASHES = "backslashes"  # found with its backslashes read as folder separators
WINDOWS_TAIL = "windows tail"  # an absolute Windows path, found under the folder by its trailing parts
ABSOLUTE_TAIL = "absolute tail"  # an absolute POSIX path not here (another machine's), found the same way

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # C:\ or C:/
_SEPARATORS = re.compile(r"[\\/]+")


def is_windows_absolute(text: str) -> bool:
    """Whether ``text`` is an absolute Windows path: a drive (``C:\\``, ``C:/``) or UNC (``\\\\server\\share``) start."""
    return bool(_DRIVE.match(text)) or text.startswith("\\\\")


def is_windows_form(text: str) -> bool:
    """Whether ``text`` is written the Windows way: an absolute Windows path, or a backslash in it."""
    return "\\" in text or is_windows_absolute(text)


def windows_parts(text: str) -> list[str]:
    """The folder and file names of ``text`` split at ``\\`` and ``/``, without its drive (``C:``) or
    UNC start (``\\\\server\\share``), ``.`` and empty parts (``..`` is kept)."""
    if _DRIVE.match(text):
        text = text[2:]
    parts = [p for p in _SEPARATORS.split(text) if p not in ("", ".")]
    return parts[2:] if text.startswith("\\\\") else parts


def is_posix_absolute(text: str) -> bool:
    """Whether ``text`` is an absolute POSIX path (``/home/alice/data/a.jpg``: another machine's, when
    it does not exist here)."""
    return text.startswith("/")


def base_name(text: str) -> str:
    """The file name at the end of ``text``, whichever separator it was written with."""
    parts = windows_parts(text)
    return parts[-1] if parts else text


def written_path(text: str, folder: Path) -> tuple[Path, str]:
    """Where the file or folder named ``text`` (relative to ``folder``, or absolute) is.

    Returns:
        (path, how): how is ``AS_WRITTEN`` when ``folder / text`` exists, or when no reading
        finds anything (the path is then the reading the Windows form means, for the message:
        the separators read as such, or the base name under ``folder``; an absolute POSIX path as
        written); ``BACKSLASHES`` when read with backslashes as separators; ``WINDOWS_TAIL`` /
        ``ABSOLUTE_TAIL`` when an absolute Windows path / an absolute POSIX path that does not exist
        (written on another machine) was found under ``folder`` by its longest existing run of
        trailing parts.
    """
    literal = folder / text
    if not (is_windows_form(text) or is_posix_absolute(text)) or literal.exists():  # no disk check for an ordinary name
        return literal, AS_WRITTEN
    parts = windows_parts(text)
    if not parts:
        return literal, AS_WRITTEN
    if is_posix_absolute(text) and "\\" not in text:
        for k in range(len(parts), 0, -1):
            tail = folder.joinpath(*parts[-k:])
            if tail.exists():
                return tail, ABSOLUTE_TAIL
        return literal, AS_WRITTEN
    if not is_windows_absolute(text):
        separated = folder.joinpath(*parts)
        return separated, BACKSLASHES if separated.exists() else AS_WRITTEN
    for k in range(len(parts), 0, -1):  # the longest tail first: images\val\a.jpg before a.jpg
        tail = folder.joinpath(*parts[-k:])
        if tail.exists():
            return tail, WINDOWS_TAIL
    return folder / parts[-1], AS_WRITTEN


def windows_hint(text: str, folder: Path) -> str:
    """Why a Windows-form ``text`` was not found under ``folder``, as a clause to append to a
    "not found" message ("" for any other name)."""
    if is_windows_absolute(text):
        parts = windows_parts(text)
        return (f"; '{text}' is an absolute Windows path, which cannot exist here, and no run of its trailing parts "
                f"({'/'.join(parts[-2:]) if len(parts) > 1 else parts[0] if parts else text}, ...) is under {folder}")
    if "\\" in text:
        return f"; '{text}' is not under {folder} as written, nor with its Windows '\\' read as folder separators"
    if is_posix_absolute(text):
        parts = windows_parts(text)
        return (f"; '{text}' does not exist here (written on another machine?), and no run of its trailing parts "
                f"({'/'.join(parts[-2:]) if len(parts) > 1 else text}, ...) is under {folder}")
    return ""


def repair_warnings(source: str, what: str, repairs: list[tuple[str, Path, str]]) -> list[str]:
    """One warning per kind of repair ``written_path`` made for the names of one file.

    Args:
        source: the file the names were read from (named in the warning).
        what: what the names are, plural, e.g. ``"file_name value(s)"`` (``"3 file_name value(s) are ..."``).
        repairs: ``(text as written, path read, how)`` for each name; ``AS_WRITTEN`` ones are not said.
    """
    out = []
    for how, said in ((BACKSLASHES, "are written with Windows '\\' separators: read with them as folder separators"),
                      (WINDOWS_TAIL, "are absolute Windows paths, which cannot exist here: each was found under the "
                                     "folder it is relative to by its trailing folder and file names (the longest "
                                     "run that exists; check they are the files meant)"),
                      (ABSOLUTE_TAIL, "are absolute paths that do not exist here (written on another machine): each was "
                                      "found under the folder it is relative to by its trailing folder and file names "
                                      "(the longest run that exists; check they are the files meant)")):
        done = [(text, path) for text, path, kind in repairs if kind == how]
        if done:
            text, path = done[0]
            out.append(f"{source}: {len(done)} {what} {said} (e.g. '{text}' -> {path})")
    return out
