"""Bad input: every problem reported at once, each naming its file; ``skip_bad`` skips them."""

from __future__ import annotations

import json

import pytest
from test_images import bomb_png
from voc_fixtures import make_voc, obj, xml_text

from retinanet.config import DataConfig
from retinanet.data import build_datasets, build_loader
from retinanet.errors import DataError

SIZES = {"min_size": 64, "max_size": 80}


@pytest.fixture
def broken(tmp_path):
    """A VOC2012 tree with one good image and one of each problem in train, and an empty val split."""
    voc = make_voc(tmp_path, {"train": [(s, [obj("cat")]) for s in ("good", "noimg", "noxml", "badxml", "alien", "corrupt")]})
    (voc / "JPEGImages" / "noimg.jpg").unlink()
    (voc / "Annotations" / "noxml.xml").unlink()
    (voc / "Annotations" / "badxml.xml").write_text("<annotation><object><name>cat</name>")
    (voc / "Annotations" / "alien.xml").write_text(xml_text("alien.jpg", (64, 80), [obj("unicorn")]))
    (voc / "JPEGImages" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("\n")
    (tmp_path / "classes.json").write_text(json.dumps({"cat": 1, "dog": 2}))
    return tmp_path, voc


def test_all_problems_reported_at_once(broken):
    root, voc = broken
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(root=str(root), classes=str(root / "classes.json")), **SIZES)
    problems = err.value.problems
    expected = {
        "noimg.jpg: image file missing": voc / "JPEGImages" / "noimg.jpg",
        "noxml.xml: annotation file missing": voc / "Annotations" / "noxml.xml",
        "badxml.xml: malformed XML": voc / "Annotations" / "badxml.xml",
        "alien.xml: class(es) not in the class map": voc / "Annotations" / "alien.xml",
        "val.txt: split file is empty": voc / "ImageSets" / "Main" / "val.txt",
    }
    assert len(problems) == len(expected), problems
    for needle, path in expected.items():
        assert any(needle in p and str(path) in p for p in problems), (needle, problems)
    assert "unicorn" in str(err.value) and "--skip-bad" in str(err.value)


def test_skip_bad_skips_each_and_reports(broken):
    root, voc = broken
    cfg = DataConfig(root=str(root), classes=str(root / "classes.json"), skip_bad=True)
    with pytest.warns(UserWarning) as caught:
        ds = build_datasets(cfg, **SIZES)
    said = "\n".join(str(w.message) for w in caught)
    for reason in ("noimg.jpg", "split file is empty", "annotation file missing", "malformed XML", "not in the class map"):
        assert reason in said, reason
    assert len(ds.skipped) == 5 and len(ds.train) == 2 and len(ds.val) == 0  # good + corrupt (found when decoding)
    names = [r.file.rsplit("/", 1)[1] for r in ds.train.records]
    corrupt = names.index("corrupt.jpg")
    with pytest.warns(UserWarning, match="corrupt.jpg: cannot decode image"):
        image, target = ds.train[corrupt]  # replaced by the next good image
    assert target["file"].endswith("good.jpg") and ds.train.bad and "corrupt.jpg" in ds.train.bad[0]


def test_corrupt_image_without_skip_bad_names_it(broken):
    root, voc = broken
    (voc / "ImageSets" / "Main" / "train.txt").write_text("good\ncorrupt\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("good\n")
    ds = build_datasets(DataConfig(root=str(root)), **SIZES)
    with pytest.raises(DataError, match=r"corrupt.jpg: cannot decode image"):
        ds.train[1]
    loader = build_loader(ds.train, batch_size=2, workers=1, train=False)
    with pytest.raises(DataError, match=r"corrupt.jpg: cannot decode image") as err:  # also from a worker process
        next(iter(loader))
    assert "Traceback" not in str(err.value) and "worker" not in str(err.value)  # the message, not PyTorch's wrapping
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(str(voc / "JPEGImages" / "corrupt.jpg"))


def test_boxes_outside_are_clipped_and_empty_ones_dropped_with_a_warning(tmp_path):
    make_voc(tmp_path, {"train": [("a", [obj("cat", (-5, 3, 200, 40)), obj("cat", (90, 10, 120, 20)), obj("dog", (10, 10, 8, 30))])], "val": [("b", [obj()])]})
    with pytest.warns(UserWarning) as record:
        ds = build_datasets(DataConfig(root=str(tmp_path), hflip_prob=0.0), **SIZES)
    messages = [str(w.message) for w in record]
    assert any("a.xml: dropped 2 box(es) with no area" in m for m in messages), messages
    assert any("a.xml: 1 box(es) extend outside" in m for m in messages), messages
    assert ds.train[0][1]["boxes"].tolist() == [[0.0, 2.0, 80.0, 40.0]]


def test_missing_dataset_and_split(tmp_path):
    with pytest.raises(DataError, match="nowhere: dataset not found"):
        build_datasets(DataConfig(root=str(tmp_path / "nowhere")), **SIZES)
    (tmp_path / "t.jpg").write_text("hello")  # a file that is no annotation: NotADirectoryError before
    with pytest.raises(DataError, match="t.jpg: not a dataset: a file that is neither a COCO annotation .json nor a YOLO"):
        build_datasets(DataConfig(root=str(tmp_path / "t.jpg")), **SIZES)
    with pytest.raises(DataError, match="t.jpg: --format voc-flat reads a folder"):
        build_datasets(DataConfig(root=str(tmp_path / "t.jpg"), format="voc-flat"), **SIZES)
    make_voc(tmp_path, {"train": [("a", [obj()])]})
    with pytest.raises(DataError, match="no split file found.*val.txt"):
        build_datasets(DataConfig(root=str(tmp_path)), **SIZES)


def test_huge_image_is_a_bad_image_named_and_skippable(tmp_path):
    """A header declaring 4e8 pixels (PIL's DecompressionBombError): named, and --skip-bad skips it."""
    voc = make_voc(tmp_path, {"train": [("good", [obj()]), ("bomb", [obj()])], "val": [("good", [obj()])]})
    (voc / "JPEGImages" / "bomb.jpg").unlink()
    bomb_png(voc / "JPEGImages" / "bomb.png", 20000, 20000)
    ds = build_datasets(DataConfig(root=str(tmp_path)), **SIZES)
    with pytest.raises(DataError, match=r"bomb.png: cannot decode image \(ImageTooLargeError: .*max_image_pixels"):
        ds.train[1]
    ds = build_datasets(DataConfig(root=str(tmp_path), skip_bad=True), **SIZES)
    with pytest.warns(UserWarning, match="skipped: .*bomb.png"):
        _, target = ds.train[1]
    assert target["file"].endswith("good.jpg")
    ds = build_datasets(DataConfig(root=str(tmp_path), max_image_pixels=1000), **SIZES)  # a lower limit: 64x80 is too large
    with pytest.raises(DataError, match=r"good.jpg: .*5120 pixels exceeds the limit of 1000"):
        ds.train[0]
