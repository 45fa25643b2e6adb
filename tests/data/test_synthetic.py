"""The synthetic dataset: deterministic bytes, sane objects, the make-synthetic command."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from retinanet.cli import main
from retinanet.data import ClassMap, make_synthetic
from retinanet.data.synthetic import CLASSES
from retinanet.data.voc import parse_voc_xml


def _digest(root):
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_synthetic(tmp_path / name, num_train=3, num_val=1, image_size=64, seed=seed)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_objects_and_layout(synthetic):
    voc = synthetic / "VOCdevkit" / "VOC2012"
    assert ClassMap.load(synthetic / "classes.json").to_dict() == {n: i + 1 for i, n in enumerate(sorted(CLASSES))}
    ids = (voc / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert len(ids) == 8 and len((voc / "ImageSets" / "Main" / "val.txt").read_text().split()) == 4
    names, sides = [], []
    for i in ids:
        ann = parse_voc_xml(voc / "Annotations" / f"{i}.xml")
        image = np.asarray(Image.open(voc / "JPEGImages" / f"{i}.jpg"))
        assert image.shape == (96, 96, 3) and ann.size == (96, 96) and 1 <= len(ann.names) <= 6
        assert (ann.boxes >= 0).all() and (ann.boxes <= 96).all() and not ann.difficult.any()
        names += ann.names
        sides += (ann.boxes[:, 2:] - ann.boxes[:, :2]).max(1).tolist()
    assert set(names) <= set(CLASSES) and len(set(names)) >= 3
    assert min(sides) < 16 and max(sides) > 20  # small and larger objects (sizes scale with the image)


def test_cli(tmp_path, capsys):
    assert main(["make-synthetic", str(tmp_path / "s"), "--num-train", "2", "--num-val", "1", "--image-size", "64", "--seed", "1"]) == 0
    assert "wrote 2 train + 1 val images" in capsys.readouterr().out
    assert len(list((tmp_path / "s" / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))) == 3


def test_ensure_synthetic_writes_once(tmp_path):
    from retinanet.data import ensure_synthetic

    root = ensure_synthetic(tmp_path / "cache" / "synthetic", num_train=2, num_val=1, image_size=64)
    stamp = (root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns
    assert ensure_synthetic(root, num_train=5) == root
    assert (root / "VOCdevkit" / "VOC2012" / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in root.parent.iterdir()) == ["synthetic"]  # no temporary folder left


def test_large_variant_crowds_small_objects(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    s = make_synthetic(a, num_train=2, num_val=1, image_size=400, object_size=(12, 24), objects=60, seed=5)
    make_synthetic(b, num_train=2, num_val=1, image_size=400, object_size=(12, 24), objects=60, seed=5)
    assert _digest(a) == _digest(b)
    assert 150 <= s["objects"] <= 180  # up to 60 per image; a shape without room is left out
    voc = a / "VOCdevkit" / "VOC2012"
    for stem in ("train_00000", "train_00001", "val_00000"):
        ann = parse_voc_xml(voc / "Annotations" / f"{stem}.xml")
        assert np.asarray(Image.open(voc / "JPEGImages" / f"{stem}.jpg")).shape == (400, 400, 3)
        extent = (ann.boxes[:, 2:] - ann.boxes[:, :2]).max(1)
        assert (ann.boxes >= 0).all() and (ann.boxes <= 400).all()
        assert extent.min() >= 4 and extent.max() <= 25 and np.median(extent) >= 12


def test_cli_large(tmp_path, capsys):
    assert main(["make-synthetic", str(tmp_path / "s"), "--object-size", "12", "20", "--objects", "30",
                 "--image-size", "200", "--num-train", "1", "--num-val", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 train + 1 val images (200x200, up to 30 objects of 12-20 px per image)" in out
    assert main(["make-synthetic", str(tmp_path / "t"), "--object-size", "30", "12"]) == 2
    assert "need 4 <= MIN <= MAX" in capsys.readouterr().err


def test_an_unwritable_cache_is_one_line_naming_the_folder_and_retinanet_cache(tmp_path, monkeypatch, run_cli):
    """A read-only home (docker --user, cluster accounts): here a cache under a regular file, which fails even
    for root (NotADirectoryError); any OSError gets the same message."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("RETINANET_CACHE", str(tmp_path / "afile" / "cache"))
    status, err = run_cli(["check-data"])  # no --data: the synthetic dataset, written into the cache
    folder = tmp_path / "afile" / "cache" / "synthetic"
    assert status == 2 and err.strip().splitlines() == [
        f"retinanet check-data: error: {folder}: cannot write the synthetic dataset there (Not a directory); "
        "set RETINANET_CACHE to a writable folder (the cache, by default ~/.cache/retinanet)"], err
