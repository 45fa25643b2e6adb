"""Names written on Windows, read on POSIX (retinanet/data/paths.py): golden readings."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinanet.data.paths import (ABSOLUTE_TAIL, AS_WRITTEN, BACKSLASHES, WINDOWS_TAIL, base_name, is_windows_absolute, repair_warnings,
                                  windows_hint, windows_parts, written_path)


@pytest.mark.parametrize("text,absolute,parts", [
    (r"C:\Users\me\data\a.jpg", True, ["Users", "me", "data", "a.jpg"]),
    ("d:/labels/a.jpg", True, ["labels", "a.jpg"]),
    (r"\\server\share\data\a.jpg", True, ["data", "a.jpg"]),
    (r"images\train\a.jpg", False, ["images", "train", "a.jpg"]),
    (r".\images\\a.jpg", False, ["images", "a.jpg"]),
    (r"..\images\a.jpg", False, ["..", "images", "a.jpg"]),
    ("images/a.jpg", False, ["images", "a.jpg"]),
    ("/data/a.jpg", False, ["data", "a.jpg"]),
])
def test_windows_parts_drop_the_drive_or_unc_share(text, absolute, parts):
    assert is_windows_absolute(text) is absolute
    assert windows_parts(text) == parts and base_name(text) == parts[-1]


def _files(root, *names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")


def test_backslashes_are_separators_when_the_literal_name_does_not_exist(tmp_path):
    _files(tmp_path, "images/train/a.jpg", "odd\\name.jpg")
    assert written_path(r"images\train\a.jpg", tmp_path) == (tmp_path / "images/train/a.jpg", BACKSLASHES)
    # a POSIX file whose name holds a backslash is read as written
    assert written_path("odd\\name.jpg", tmp_path) == (tmp_path / "odd\\name.jpg", AS_WRITTEN)
    assert written_path("images/train/a.jpg", tmp_path) == (tmp_path / "images/train/a.jpg", AS_WRITTEN)
    # not found either way: the separated reading, for the message, and said as such
    assert written_path(r"images\val\a.jpg", tmp_path) == (tmp_path / "images/val/a.jpg", AS_WRITTEN)
    assert "nor with its Windows '\\' read as folder separators" in windows_hint(r"images\val\a.jpg", tmp_path)
    assert windows_hint("images/val/a.jpg", tmp_path) == ""


def test_an_absolute_windows_path_is_found_by_its_longest_existing_tail(tmp_path):
    _files(tmp_path, "images/val/a.jpg", "a.jpg", "b.jpg")
    assert written_path(r"C:\Users\me\coco\images\val\a.jpg", tmp_path) == (tmp_path / "images/val/a.jpg", WINDOWS_TAIL)
    assert written_path("C:/Users/me/b.jpg", tmp_path) == (tmp_path / "b.jpg", WINDOWS_TAIL)  # at least the base name
    assert written_path(r"\\nas\share\x\b.jpg", tmp_path) == (tmp_path / "b.jpg", WINDOWS_TAIL)
    assert written_path(r"C:\Users\me\c.jpg", tmp_path) == (tmp_path / "c.jpg", AS_WRITTEN)
    hint = windows_hint(r"C:\Users\me\c.jpg", tmp_path)
    assert r"'C:\Users\me\c.jpg' is an absolute Windows path, which cannot exist here" in hint and str(tmp_path) in hint


def test_repairs_are_said_once_per_kind_with_a_count_and_one_example(tmp_path):
    repairs = [(r"images\a.jpg", tmp_path / "images/a.jpg", BACKSLASHES), (r"images\b.jpg", tmp_path / "images/b.jpg", BACKSLASHES),
               (r"C:\x\c.jpg", tmp_path / "c.jpg", WINDOWS_TAIL), ("d.jpg", tmp_path / "d.jpg", AS_WRITTEN)]
    slash, tail = repair_warnings("ann.json", "file_name value(s)", repairs)
    assert slash.startswith("ann.json: 2 file_name value(s) are written with Windows '\\' separators")
    assert slash.endswith(f"(e.g. 'images\\a.jpg' -> {tmp_path / 'images/a.jpg'})")
    assert tail.startswith("ann.json: 1 file_name value(s) are absolute Windows paths") and "c.jpg" in tail
    assert repair_warnings("ann.json", "x", repairs[3:]) == []


def test_an_absolute_posix_path_of_another_machine_is_found_by_its_longest_existing_tail(tmp_path):
    """A COCO file_name `/home/alice/project/images/a.jpg` (labelme, CVAT on another machine) or
    Label Studio's `/data/upload/3/b.jpg`: "image file missing" for every image, though the files
    lay beside the JSON; an absolute Windows path was already found by its tail."""
    _files(tmp_path, "images/a.jpg", "b.jpg")
    assert written_path("/home/alice/project/images/a.jpg", tmp_path) == (tmp_path / "images/a.jpg", ABSOLUTE_TAIL)
    assert written_path("/data/upload/3/b.jpg", tmp_path) == (tmp_path / "b.jpg", ABSOLUTE_TAIL)
    assert written_path(str(tmp_path / "b.jpg"), tmp_path / "images") == (tmp_path / "b.jpg", AS_WRITTEN)  # it exists
    assert written_path("/home/alice/c.jpg", tmp_path) == (Path("/home/alice/c.jpg"), AS_WRITTEN)  # as written, for the message
    assert "'/home/alice/c.jpg' does not exist here" in windows_hint("/home/alice/c.jpg", tmp_path)
    said = repair_warnings("ann.json", "file_name value(s)", [("/data/upload/3/b.jpg", tmp_path / "b.jpg", ABSOLUTE_TAIL)])
    assert said == [f"ann.json: 1 file_name value(s) are absolute paths that do not exist here (written on another machine): "
                    "each was found under the folder it is relative to by its trailing folder and file names (the longest "
                    f"run that exists; check they are the files meant) (e.g. '/data/upload/3/b.jpg' -> {tmp_path / 'b.jpg'})"]
