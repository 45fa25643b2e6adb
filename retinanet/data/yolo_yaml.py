"""YOLO (ultralytics) ``data.yaml`` reading: class names, dataset root and split sources.

``data.yaml`` keys read: ``path`` (dataset root; relative to the yaml's folder; absent = that
folder), ``train`` / ``val`` / ``test`` (``validation`` is taken for a missing ``val``), each a
folder of images (searched recursively), a ``.txt`` list of image paths, or a list of those;
``names`` (a list, or an ``{id: name}`` map) or ``nc`` alone (names ``class0``, ``class1``, ...);
``kpt_shape`` (pose datasets: the keypoints after the box are not used). A split entry is resolved
against the root; when that does not exist and it starts with ``../`` (Roboflow writes ``train:
../train/images`` next to a yaml in the dataset folder) the entry without ``../`` is used. Lines
of a ``.txt`` list are image paths, relative ones relative to the list's folder.

Written on Windows (``retinanet.data.paths.written_path``): an entry or list line with ``\\``
separators (``train: images\\train``) is read with them as folder separators when it does not
exist as written; an absolute Windows one (``C:\\data\\images\\train``) by its trailing folder
names under the root. A ``path:`` that is not a folder here (another machine's: Colab's
``/content/...``, or ``C:\\Users\\me\\...``) gives way to the yaml's folder when the splits are
there. Each repair is said once (``YoloSpec.notes``).

Which split is read: ``train_split`` / ``val_split`` name the yaml keys (``--val-split test``
evaluates the ``test:`` images).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from retinanet.data.paths import is_windows_absolute, repair_warnings, windows_hint, written_path
from retinanet.errors import DataError
from retinanet.files import load_yaml

SPLIT_KEYS = ("train", "val", "test", "minival")  # the yaml keys that name images, as in ultralytics


@dataclass
class YoloSpec:
    """A parsed ``data.yaml``.

    Attributes:
        yaml: the file.
        root: the dataset root its split entries are relative to.
        names: class names, index = YOLO class id (``None`` for ids absent from an ``{id: name}`` map).
        splits: yaml key -> image sources (folders or ``.txt`` lists), resolved.
        keypoints: values per line after the box (pose datasets), 0 otherwise.
    """

    yaml: Path
    root: Path
    names: list[str | None]
    splits: dict[str, list[Path]]
    keypoints: int = 0
    notes: tuple[str, ...] = ()  # how the root and the splits were found when not as written (warnings for the reader)
    hints: dict[Path, str] = field(default_factory=dict)  # split source -> why its Windows form was not found


def find_data_yaml(root: Path) -> Path:
    """``root`` itself when a file, else ``root/data.yaml`` or the one ``*.yaml``/``*.yml`` in it."""
    if root.is_file():
        return root
    if (root / "data.yaml").is_file():
        return root / "data.yaml"
    found = sorted(p for p in root.glob("*.y*ml") if p.suffix.lower() in (".yaml", ".yml"))
    if len(found) != 1:
        what = f"{len(found)} yaml files ({', '.join(p.name for p in found)})" if found else "no data.yaml"
        raise DataError([f"{root}: {what}; give the YOLO dataset's yaml file as --data"])
    return found[0]


def _names(data: dict, path: Path) -> list[str | None]:
    """Class names indexed by YOLO id, from ``names`` (list or ``{id: name}``) or ``nc``."""
    names, nc = data.get("names"), data.get("nc")
    if names is None:
        if isinstance(nc, int) and not isinstance(nc, bool) and nc > 0:
            return [f"class{i}" for i in range(nc)]
        raise DataError([f"{path}: no 'names:' (a list of class names, or {{id: name}}) and no 'nc:'"])
    if isinstance(names, dict):  # quoted ids ("0": cat, as some exporters write them) are the ids they spell
        names = {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v for k, v in names.items()}
        bad = [k for k in names if isinstance(k, bool) or not isinstance(k, int) or k < 0]
        if bad:
            raise DataError([f"{path}: 'names:' keys must be class ids 0, 1, ...; not {', '.join(map(repr, bad))}"])
        table: list[str | None] = [None] * (max(names) + 1 if names else 0)
        for k, v in names.items():
            table[k] = v
        names = table
    if not isinstance(names, list) or not any(n is not None for n in names):
        raise DataError([f"{path}: 'names:' must be a non-empty list of class names or an {{id: name}} map"])
    problems = [f"{path}: class {i} has name {n!r}; names are non-empty strings" for i, n in enumerate(names)
                if n is not None and not (isinstance(n, (str, int)) and str(n).strip())]
    names = [None if n is None else str(n).strip() for n in names]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n is not None and n in seen:
            problems.append(f"{path}: classes {seen[n]} and {i} are both named {n!r}")
        seen.setdefault(n, i)
    count = len([n for n in names if n is not None])
    if isinstance(nc, int) and nc != count:
        problems.append(f"{path}: 'nc: {nc}' but 'names:' has {count} classes")
    if problems:
        raise DataError(problems, summary=f"invalid class names in {path}")
    return names


def absolute_path(p: Path) -> Path:
    """``p`` made absolute with ``..`` collapsed, symlinks kept (messages show the paths as written)."""
    return Path(os.path.abspath(p))


def split_source(root: Path, entry: str) -> tuple[Path, str]:
    """(the folder or list file a split entry names, how it was read: ``written_path``'s kinds).

    Relative to ``root``; ``~`` expanded; written with ``\\`` or as an absolute Windows path:
    ``written_path``; not there and starting with ``../``: without it (Roboflow).
    """
    text = os.path.expanduser(entry.strip())
    p, how = written_path(text, root)
    if not p.exists() and text.startswith(("../", "..\\")):
        p, how = written_path(text[3:], root)  # Roboflow: "../train/images" written for a yaml one level down
    return absolute_path(p), how


def _split_sources(root: Path, value, key: str, path: Path, repairs: list, hints: dict[Path, str]) -> list[Path]:
    """The folders / list files of one split entry (a string or a list of strings); Windows-form
    entries read otherwise are added to ``repairs`` (``(entry, path, how)``), those not found to ``hints``."""
    entries = value if isinstance(value, list) else [value]
    if not entries or not all(isinstance(e, str) and e.strip() for e in entries):
        raise DataError([f"{path}: '{key}:' must be a folder or .txt file path, or a list of them; not {value!r}"])
    out = []
    for e in entries:
        p, how = split_source(root, e)
        repairs.append((f"{key}: {e.strip()}", p, how))
        if not p.exists() and windows_hint(e.strip(), root):
            hints[p] = f" ('{key}: {e.strip()}' in {path}{windows_hint(e.strip(), root)})"
        out.append(p)
    return out


def read_data_yaml(path: str | Path) -> YoloSpec:
    """Parse and check a YOLO ``data.yaml`` (see the module docstring).

    Raises:
        DataError: unreadable yaml, no names, malformed entries; the message names ``path``.
    """
    path = Path(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError([f"{path}: YOLO data yaml not found"]) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise DataError([f"{path}: not a readable yaml file ({err})"]) from None
    if not isinstance(data, dict):
        raise DataError([f"{path}: a YOLO data yaml is a mapping with 'train:', 'val:' and 'names:'"])
    if "val" not in data and "validation" in data:
        data["val"] = data["validation"]
    base = absolute_path(path.parent)
    written = str(data["path"]).strip() if data.get("path") else ""
    repairs: list = []
    root: Path | None = base
    if is_windows_absolute(written):
        root = None  # another machine's folder, as Colab's /content/... is: the rule below
    elif written:
        root, how = written_path(os.path.expanduser(written), base)
        root = absolute_path(root)
        repairs.append((f"path: {written}", root, how))
    keypoints = 0
    if data.get("kpt_shape") is not None:
        try:
            keypoints = math.prod(int(k) for k in data["kpt_shape"])
        except (TypeError, ValueError):
            raise DataError([f"{path}: 'kpt_shape:' must be a list of integers, not {data['kpt_shape']!r}"]) from None
    notes = []
    if root is None or not root.is_dir():  # written on another machine (Colab's /content/..., C:\\...): the yaml's folder?
        here = "is an absolute Windows path, not a folder here" if is_windows_absolute(written) else "is not a folder here"
        if any(split_source(base, data[k])[0].exists() for k in SPLIT_KEYS if isinstance(data.get(k), str)):
            notes.append(f"{path}: 'path: {written}' {here}; the splits were found under the yaml's folder {base} and "
                         "read from there")
            root = base
        else:
            shown = "" if is_windows_absolute(written) else f" ({root})"
            raise DataError([f"{path}: 'path: {written}' {here}{shown}, and the splits are not under the yaml's folder "
                             f"{base} either (fix path:, or leave it out to use the yaml's folder)"])
    hints: dict[Path, str] = {}
    splits = {k: _split_sources(root, data[k], k, path, repairs, hints) for k in SPLIT_KEYS if data.get(k) is not None}
    notes += repair_warnings(str(path), "entry(ies)", repairs)
    return YoloSpec(path, root, _names(data, path), splits, keypoints, tuple(notes), hints)
