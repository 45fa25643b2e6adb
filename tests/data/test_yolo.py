"""YOLO (ultralytics) datasets: data.yaml resolution, label parsing, bad lines, and the CLI end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from voc_fixtures import write_image

from retinanet.cli import main
from retinanet.config import DataConfig
from retinanet.data import build_datasets, check_dataset
from retinanet.data.build import detect_format, read_records
from retinanet.data.yolo import label_path, parse_label_lines
from retinanet.errors import DataError

NAMES = ["cat", "dog", "bird"]


def voc_to_yolo(voc: Path, out: Path, layout: str = "ultralytics", dict_names: bool = False) -> Path:
    """Convert a VOC dataset to YOLO; returns the data.yaml.

    layout: "ultralytics" (images/<split>, labels/<split>, ``path: .``), "roboflow"
    (<split>/images, <split>/labels, ``train: ../train/images``, no ``path``) or "lists" (images/<split>
    named by ``train.txt`` with ``./`` lines and ``val.txt`` with absolute paths).
    """
    records, class_map, *_ = read_records(DataConfig(root=str(voc)))
    assert class_map.ids == list(range(1, len(class_map) + 1))
    folder = {"train": "train", "val": "valid"} if layout == "roboflow" else {"train": "train", "val": "val"}
    for split, recs in records.items():
        for r in recs:
            src = Path(r.file)
            img = out / (f"{folder[split]}/images" if layout == "roboflow" else f"images/{split}") / src.name
            img.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, img)
            h, w = r.size
            xyxy = r.boxes / np.array([w, h, w, h], np.float32)
            cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)
            label = label_path(img)
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(f"{c - 1} " + " ".join(f"{v:.6f}" for v in row) + "\n" for c, row in zip(r.labels, cxcywh)))
    names = class_map.names
    data: dict = {"names": dict(enumerate(names)) if dict_names else names}
    if layout == "ultralytics":
        data.update(path=".", train="images/train", val="images/val")
    elif layout == "roboflow":
        data.update(train="../train/images", val="../valid/images", nc=len(names))
    else:
        train = sorted((out / "images" / "train").iterdir())
        (out / "train.txt").write_text("".join(f"./images/train/{p.name}\n" for p in train))
        (out / "val.txt").write_text("".join(f"{p}\n" for p in sorted((out / "images" / "val").iterdir())))
        data.update(train="train.txt", val="val.txt")
    (out / "data.yaml").write_text(yaml.safe_dump(data))
    return out / "data.yaml"


def tiny_yolo(root: Path, labels: dict[str, str], names=NAMES, hw=(40, 50), split: str = "train", **yaml_extra) -> Path:
    """images/<split>/<stem>.png (+ labels/<split>/<stem>.txt when the text is not None) and data.yaml."""
    for i, (stem, text) in enumerate(labels.items()):
        write_image(root / "images" / split / f"{stem}.png", hw, seed=i)
        if text is not None:
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    data = {"path": str(root), "train": f"images/{split}", "val": f"images/{split}", "names": names, **yaml_extra}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


def _by_stem(records):
    return {Path(r.file).stem: r for r in records}


@pytest.mark.parametrize("layout,dict_names", [("ultralytics", False), ("ultralytics", True), ("roboflow", False), ("lists", True)])
def test_round_trip_from_voc(synthetic, tmp_path, layout, dict_names):
    voc, _, _, _, _, _ = read_records(DataConfig(root=str(synthetic)))
    data_yaml = voc_to_yolo(synthetic, tmp_path / "yolo", layout, dict_names)
    records, class_map, root, fmt, problems, warns = read_records(DataConfig(root=str(data_yaml)))
    assert (fmt, root, problems, warns) == ("yolo", data_yaml, [], [])
    assert class_map.to_dict() == {"circle": 1, "square": 2, "star": 3, "triangle": 4}
    for split in ("train", "val"):
        got, want = _by_stem(records[split]), _by_stem(voc[split])
        assert sorted(got) == sorted(want) and len(got) == {"train": 8, "val": 4}[split]
        for stem, r in got.items():
            assert r.size == (96, 96) and np.array_equal(r.labels, want[stem].labels) and not r.ignore.any()
            np.testing.assert_allclose(r.boxes, want[stem].boxes, atol=1e-3)
    assert sum(len(r.labels) for r in records["train"]) > 8


def test_folder_with_data_yaml_and_relative_path(synthetic, tmp_path):
    data_yaml = voc_to_yolo(synthetic, tmp_path / "ds", "ultralytics")
    assert detect_format(tmp_path / "ds") == "yolo" and detect_format(Path("x/data.yml")) == "yolo"
    (tmp_path / "cfg").mkdir()
    other = tmp_path / "cfg" / "mine.yaml"  # `path:` relative to the yaml's own folder
    other.write_text(data_yaml.read_text().replace("path: .", "path: ../ds"))
    for root in (tmp_path / "ds", other):
        records, *_ = read_records(DataConfig(root=str(root)))
        assert len(records["train"]) == 8 and len(records["val"]) == 4
    ds = build_datasets(DataConfig(root=str(tmp_path / "ds"), format="yolo", val_split="train"), min_size=64, max_size=64)
    assert len(ds.val) == 8 and ds.format == "yolo"  # --val-split names the yaml key read
    image, target = ds.val[0]
    assert image.shape == (3, 64, 64) and target["labels"].min() >= 1 and target["orig_size"] == (96, 96)


def test_empty_and_missing_label_files_mean_no_objects(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.4\n2 0.25 0.5 0.5 1.0\n", "empty": "", "blank": "\n  \n", "none": None})
    records, class_map, *_, problems, warns = read_records(DataConfig(root=str(data)))
    assert problems == [] and warns == [] and class_map.to_dict() == {"cat": 1, "dog": 2, "bird": 3}
    r = _by_stem(records["train"])
    assert sorted(r) == ["a", "blank", "empty", "none"]
    np.testing.assert_allclose(r["a"].boxes, [[20, 12, 30, 28], [0, 0, 25, 40]])  # W=50, H=40
    assert r["a"].labels.tolist() == [1, 3] and r["a"].size == (40, 50)
    assert all(len(r[s].labels) == 0 and r[s].boxes.shape == (0, 4) for s in ("empty", "blank", "none"))
    assert r["none"].source == r["none"].file and r["a"].source.endswith("labels/train/a.txt")


def test_polygon_lines_give_the_enclosing_box_and_clipping_warns(tmp_path):
    data = tiny_yolo(tmp_path, {"p": "1 0.1 0.2 0.5 0.1 0.3 0.8\n0 0.95 0.5 0.3 0.2\n0 0.5 0.5 0 0.2\n"})
    records, *_, problems, warns = read_records(DataConfig(root=str(data)))
    (r,) = records["train"]
    assert problems == [] and r.labels.tolist() == [2, 1]
    np.testing.assert_allclose(r.boxes, [[5, 4, 25, 32], [40, 16, 50, 24]], atol=1e-4)
    assert any("p.txt: 1 box(es) extend outside the 50x40 image (line(s) 2); clipped" in w for w in warns)
    assert any("p.txt: dropped 1 box(es) with no area (line(s) 3)" in w for w in warns)


def test_duplicate_rows_are_dropped_with_a_warning(tmp_path):
    text = "0 0.5 0.5 0.2 0.4\n1 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 0.4\n2 0.2 0.2 0.1 0.1\n0 0.5 0.5 0.2 0.4\n"
    data = tiny_yolo(tmp_path, {"d": text, "clean": "0 0.5 0.5 0.2 0.4\n"})
    records, *_, problems, warns = read_records(DataConfig(root=str(data)))
    r = _by_stem(records["train"])
    assert problems == [] and r["d"].labels.tolist() == [1, 2, 3] and r["clean"].labels.tolist() == [1]
    np.testing.assert_allclose(r["d"].boxes[:2], [[20, 12, 30, 28], [20, 12, 30, 28]])  # same box, two classes: kept
    warning = (f"{data.parent / 'labels' / 'train' / 'd.txt'}: dropped 2 duplicate label line(s) (line(s) 3, 5: "
               "same class and box as an earlier line)")
    assert warns == [warning] * 2  # once per split: train and val are the same folder here


BAD_LINES = [
    ("0 0.5 0.5 0.2", "4 fields; a box line has 5"),
    ("0 0.5 0.5 0.2 0.2 0.9", "6 fields; a box line has 5"),
    ("0 0.5 0.5 x 0.2", "not a number in '0 0.5 0.5 x 0.2'"),
    ("0 0.5 nan 0.2 0.2", "nan is not a finite number in '0 0.5 nan 0.2 0.2'"),
    ("0 0.5 0.5 inf 0.2", "inf is not a finite number in '0 0.5 0.5 inf 0.2'"),
    ("3 0.5 0.5 0.2 0.2", "class id 3 is not in 'names' (3 classes)"),
    ("-1 0.5 0.5 0.2 0.2", "class id -1 is not in 'names'"),
    ("1.5 0.5 0.5 0.2 0.2", "class id 1.5 is not in 'names'"),
    ("0 50 40 20 10", "coordinates 50 40 20 10 are not normalised to 0..1"),
    ("0 0.5 1.02 0.2 0.2", "coordinates 0.5 1.02 0.2 0.2 are not normalised to 0..1"),
    ("0 0.5 0.5 -0.2 0.2", "coordinates 0.5 0.5 -0.2 0.2 are not normalised"),
]


@pytest.mark.parametrize("line,message", BAD_LINES)
def test_each_bad_line_is_named_with_file_and_line(tmp_path, line, message):
    data = tiny_yolo(tmp_path, {"good": "0 0.5 0.5 0.2 0.2\n", "bad": f"1 0.5 0.5 0.2 0.2\n\n{line}\n"})
    bad_txt = tmp_path / "labels" / "train" / "bad.txt"
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(root=str(data)), min_size=64, max_size=64)
    assert len(err.value.problems) == 2  # the train and the val split read the same folder
    assert err.value.problems[0].startswith(f"{bad_txt}:3: {message}")
    with pytest.warns(UserWarning, match=f"skipped: {bad_txt}:3: "):
        ds = build_datasets(DataConfig(root=str(data), skip_bad=True), min_size=64, max_size=64)
    assert [Path(r.file).stem for r in ds.train.records] == ["good"]  # the whole image is left out


def test_negative_size_within_tolerance_is_a_bad_line():
    _, _, _, problems = parse_label_lines("0 0.5 0.5 -0.005 0.2\n", Path("x.txt"), NAMES)
    assert problems == ["x.txt:1: negative width or height (-0.005 0.2)"]
    cls, boxes, lines, problems = parse_label_lines("0 1.005 0.5 0.2 0.2\n2 0 0 0.1 0.1\n", Path("x.txt"), NAMES)
    assert problems == [] and cls.tolist() == [0, 2] and lines.tolist() == [1, 2]  # small overshoot: accepted
    np.testing.assert_allclose(boxes, [[0.905, 0.4, 1.105, 0.6], [-0.05, -0.05, 0.05, 0.05]])


def test_dict_names_with_a_gap_and_pose_lines(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2 0.1 0.1 2 0.2 0.2 1\n", "b": "1 0.5 0.5 0.2 0.2 0 0 0 0 0 0\n"},
                     names={0: "cat", 2: "bird"}, kpt_shape=[2, 3])
    records, class_map, *_, problems, _ = read_records(DataConfig(root=str(data)))
    assert class_map.to_dict() == {"cat": 1, "bird": 3}
    assert len(records["train"]) == 1 and records["train"][0].labels.tolist() == [1]
    # the ids there, not "(3 classes)" for a map of two names
    assert problems[0] == f"{tmp_path / 'labels/train/b.txt'}:1: class id 1 is not in 'names' (ids 0, 2)"


def test_orphan_labels_missing_images_and_yaml_problems(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "val.txt").write_text("images/train/a.png\nimages/train/missing.jpg\n")
    spec = yaml.safe_load(data.read_text())
    data.write_text(yaml.safe_dump({**spec, "val": "val.txt"}))
    report = check_dataset(DataConfig(root=str(data)), progress=False)
    assert not report.ok and report.format == "yolo"
    assert report.errors == [
        f"{tmp_path / 'labels/train/gone.txt'}: label file without its image (no gone.* image in {tmp_path / 'images/train'})",
        f"{tmp_path / 'val.txt'}:2: image images/train/missing.jpg not found ({tmp_path / 'images/train/missing.jpg'})",
    ]
    assert report.splits["train"].images == report.splits["val"].images == 1  # the good image is still read
    assert any("the same image is in splits train and val" in w for w in report.warnings)

    for content, message in [
        ({"train": "images/train", "val": "images/train"}, "no 'names:'"),
        ({"train": "images/train", "val": "images/train", "names": ["a", "a"]}, "classes 0 and 1 are both named 'a'"),
        ({"train": "images/train", "val": "images/train", "names": ["a"], "nc": 2}, "'nc: 2' but 'names:' has 1 classes"),
        ({"train": "images/train", "names": ["a"]}, "no 'val:' entry (splits: train)"),
        ({"train": "images/nope", "val": "images/train", "names": ["a"]}, "images/nope: image folder or list not found"),
        (["a", "list"], "a YOLO data yaml is a mapping"),
    ]:
        data.write_text(yaml.safe_dump(content))
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            build_datasets(DataConfig(root=str(data)), min_size=64, max_size=64)


def test_class_map_file_maps_names(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "classes.json").write_text(json.dumps({"bird": 7, "cat": 2}))
    cfg = DataConfig(root=str(data), classes=str(tmp_path / "classes.json"))
    records, class_map, *_, problems, _ = read_records(cfg)
    assert class_map.to_dict() == {"cat": 2, "bird": 7} and _by_stem(records["train"])["a"].labels.tolist() == [2, 7]
    assert problems[0] == f"{tmp_path / 'labels/train/b.txt'}:1: class 1 ('dog') is not in the class map ({tmp_path / 'classes.json'})"


def test_cli_train_eval_check_data(synthetic, tmp_path, capsys):
    data = str(voc_to_yolo(synthetic, tmp_path / "yolo", "roboflow"))
    run = tmp_path / "run"
    tiny = ["--arch", "resnet18_fpn", "--from-scratch", "--min-size", "64", "--max-size", "64", "--fpn-channels", "32", "--head-convs", "1"]
    assert main(["train", "--data", data, *tiny, "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                 "--out", str(run), "--warmup-iters", "1", "--quiet"]) == 0
    assert json.loads((run / "classes.json").read_text()) == {"circle": 1, "square": 2, "star": 3, "triangle": 4}
    assert main(["eval", "--weights", str(run / "last.pt"), "--data", data, "--format", "yolo", "--out", str(tmp_path / "ev"),
                 "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["num_images"] == 4
    capsys.readouterr()
    assert main(["check-data", "--data", data, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"dataset {data} (yolo)" in out and "train: 8 images" in out and "val: 4 images" in out and "OK" in out


def test_nc_alone_names_the_classes_and_exif_rotation_sets_the_frame(tmp_path):
    from PIL import Image

    from retinanet.data.images import load_image

    data = tiny_yolo(tmp_path, {"a": "1 0.5 0.25 0.5 0.5\n"}, names=None, nc=2)
    stored = tmp_path / "images" / "train" / "a.png"
    turned = stored.with_suffix(".jpg")
    exif = Image.Exif()
    exif[274] = 6  # stored 50 wide x 40 high, displayed turned by 90 degrees: 40 wide x 50 high
    Image.open(stored).save(turned, exif=exif)
    stored.unlink()
    records, class_map, *_, problems, _ = read_records(DataConfig(root=str(data)))
    (r,) = records["train"]
    assert problems == [] and class_map.to_dict() == {"class0": 1, "class1": 2}
    assert r.size == (50, 40) and r.labels.tolist() == [2]
    np.testing.assert_allclose(r.boxes, [[10, 0, 30, 25]])  # normalised by the displayed W=40, H=50
    assert load_image(r.file, r.size).shape == (3, 50, 40)


def test_list_line_numbers_count_blank_lines(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "val.txt").write_text(f"\n{tmp_path / 'images/train/a.png'}\n\nnope.jpg\ndata.yaml\n")
    data.write_text(data.read_text().replace("val: images/train", "val: val.txt"))
    records, *_, problems, _ = read_records(DataConfig(root=str(data)))
    assert len(records["val"]) == 1 and problems == [
        f"{tmp_path / 'val.txt'}:4: image nope.jpg not found ({tmp_path / 'nope.jpg'})",
        f"{tmp_path / 'val.txt'}:5: data.yaml is not an image file (.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff)",
    ]


@pytest.mark.parametrize("exif", ["auto", "apply", "ignore"])
def test_exif_rotated_phone_photo_boxes_land_on_the_object_under_each_rule(tmp_path, exif):
    """A 160x96 (WxH) photo stored with EXIF orientation 6: the label is written in the frame the
    rule reads (displayed for auto/apply, stored for ignore) and the box must cover the object in
    the image the dataset decodes (the size comes from images.oriented_size under the same rule)."""
    from PIL import Image, ImageOps

    stored = np.zeros((96, 160, 3), np.uint8)
    stored[10:40, 20:70] = 255  # the object: 50x30 at (20, 10) in the stored frame
    img = tmp_path / "images" / "train" / "phone.jpg"
    img.parent.mkdir(parents=True)
    exif_tag = Image.Exif()
    exif_tag[0x0112] = 6
    Image.fromarray(stored).save(img, exif=exif_tag, quality=100)
    with Image.open(img) as opened:
        frame = np.asarray(opened if exif == "ignore" else ImageOps.exif_transpose(opened))[..., 0]
    rows, cols = np.nonzero(frame > 128)
    h, w = frame.shape
    x1, y1, x2, y2 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
    label = tmp_path / "labels" / "train" / "phone.txt"
    label.parent.mkdir(parents=True)
    label.write_text(f"0 {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images/train", "val": "images/train", "names": NAMES}))
    ds = build_datasets(DataConfig(root=str(tmp_path), exif=exif, hflip_prob=0.0), min_size=96, max_size=160)
    image, target = ds.train.load(0)
    assert tuple(image.shape[1:]) == (h, w) == ((96, 160) if exif == "ignore" else (160, 96))
    rows, cols = np.nonzero(image[0].numpy() > 128)
    truth = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float64)
    (box,) = target["boxes"].numpy().astype(np.float64)
    inter = np.prod(np.clip(np.minimum(box[2:], truth[2:]) - np.maximum(box[:2], truth[:2]), 0, None))
    iou = inter / (np.prod(box[2:] - box[:2]) + np.prod(truth[2:] - truth[:2]) - inter)
    assert iou > 0.95, (exif, box, truth, iou)


def test_an_image_listed_twice_is_read_once_with_a_warning(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "val.txt").write_text("images/train/a.png\nimages/train/b.png\n./images/train/a.png\n")
    spec = yaml.safe_load(data.read_text())
    data.write_text(yaml.safe_dump({**spec, "val": "val.txt"}))
    with pytest.warns(UserWarning, match=r"1 image\(s\) named more than once, each read once: .*a.png \(.*val.txt:1, .*val.txt:3\)"):
        ds = build_datasets(DataConfig(root=str(data)), min_size=64, max_size=64)
    assert [Path(r.file).stem for r in ds.val.records] == ["a", "b"]  # today also once, but without a word


def test_files_in_an_image_folder_that_are_not_read_are_named(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "images" / "train" / "b.gif").write_bytes(b"GIF89a")  # today: left out without a word
    with pytest.warns(UserWarning, match=r"images/train: 1 file\(s\) not read, not one of the image types .*b.gif"):
        ds = build_datasets(DataConfig(root=str(data)), min_size=64, max_size=64)
    assert [Path(r.file).stem for r in ds.train.records] == ["a"]


def test_a_key_given_twice_in_data_yaml_is_an_error_naming_both_lines(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    data.write_text(data.read_text() + "names: [dog, cat, bird]\n")  # today: the second names: wins, classes swapped
    with pytest.raises(DataError, match=r"data.yaml: not a readable yaml file \(.*key 'names' is given twice \(lines \d+ and \d+\)"):
        build_datasets(DataConfig(root=str(data)), min_size=64, max_size=64)


def test_two_images_of_one_label_file_are_a_problem_naming_both(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    write_image(tmp_path / "images" / "train" / "a.jpg", (40, 50), seed=9)  # another picture, a.txt's boxes
    records, *_, problems, _ = read_records(DataConfig(root=str(data)))
    label = tmp_path / "labels" / "train" / "a.txt"
    assert f"{label}: the label file of 2 images (a.jpg, a.png), which cannot be told apart; give each image its own name" in problems
    assert [Path(r.file).name for r in records["train"]] == ["b.png"]


def test_labelimg_classes_txt_is_not_a_label_file_and_a_labels_folder_as_split_is_named(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "labels" / "train" / "classes.txt").write_text("circle\nsquare\n")  # LabelImg writes it
    records, *_, problems, _ = read_records(DataConfig(root=str(data)))
    assert not problems and len(records["train"]) == 1
    data.write_text(data.read_text().replace("train: images/train", "train: labels/train"))
    _, *_, problems, _ = read_records(DataConfig(root=str(data)))
    assert f"{tmp_path / 'labels' / 'train'}: no image files in this folder (it holds 2 .txt file(s): a labels folder? " \
           "the split names the images folder, e.g. images/train)" in problems


def test_a_byte_order_mark_in_an_image_list_or_label_file_is_not_content(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "\ufeff0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "val.txt").write_text("\ufeffimages/train/a.png\n", encoding="utf-8")
    data.write_text(data.read_text().replace("val: images/train", "val: val.txt"))
    records, *_, problems, _ = read_records(DataConfig(root=str(data)))
    assert not problems and len(records["val"]) == 1 and records["train"][0].labels.tolist() == [1]


def test_quoted_class_ids_in_names_are_the_ids_they_spell(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"}, names={"0": "cat", "1": "dog"})
    records, class_map, *_ = read_records(DataConfig(root=str(data)))
    assert class_map.to_dict() == {"cat": 1, "dog": 2} and records["train"][0].labels.tolist() == [2]


def test_a_path_key_of_another_machine_is_named_or_read_from_the_yaml_s_folder(tmp_path):
    """Colab's `path: /content/datasets/x`: every split 'not found', and path: never named."""
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    data.write_text(data.read_text().replace(f"path: {tmp_path}", "path: /content/datasets/shapes"))
    records, *_, problems, warns = read_records(DataConfig(root=str(data)))
    assert not problems and len(records["train"]) == 1
    assert any("'path: /content/datasets/shapes' is not a folder here; the splits were found under the yaml's folder" in w
               for w in warns)
    data.write_text(data.read_text().replace("train: images/train", "train: elsewhere/train").replace(
        "val: images/train", "val: elsewhere/val"))
    with pytest.raises(DataError, match="'path: /content/datasets/shapes' is not a folder here .*fix path:"):
        read_records(DataConfig(root=str(data)))


def test_a_data_yaml_written_on_windows_is_read_and_said(tmp_path):
    """`path: C:\\...` with `train: images\\train`: '/.../C:\\Users\\...' and 'images\\train: not found'."""
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    data.write_text(data.read_text().replace(f"path: {tmp_path}", "path: C:\\Users\\me\\datasets\\shapes")
                    .replace("images/train", "images\\train"))
    records, *_, problems, warns = read_records(DataConfig(root=str(data)))
    assert not problems and [Path(r.file) for r in records["train"]] == [tmp_path / "images" / "train" / "a.png"]
    assert f"{data}: 'path: C:\\Users\\me\\datasets\\shapes' is an absolute Windows path, not a folder here; the splits " \
           f"were found under the yaml's folder {tmp_path} and read from there" in warns
    assert f"{data}: 2 entry(ies) are written with Windows '\\' separators: read with them as folder separators (e.g. " \
           f"'train: images\\train' -> {tmp_path / 'images' / 'train'})" in warns
    data.write_text(data.read_text().replace("images\\train", "images\\nowhere"))
    with pytest.raises(DataError) as err:
        read_records(DataConfig(root=str(data)))
    (message,) = err.value.problems
    assert f"{tmp_path}/C:" not in message and "is an absolute Windows path, not a folder here, and the splits are not " \
        f"under the yaml's folder {tmp_path} either" in message


def test_windows_split_entries_and_list_lines_are_read_as_separators(tmp_path):
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "train.txt").write_text("images\\train\\a.png\r\nC:\\Users\\me\\shapes\\images\\train\\b.png\r\n")
    data.write_text(data.read_text().replace("train: images/train", "train: .\\train.txt"))
    records, *_, problems, warns = read_records(DataConfig(root=str(data)))
    assert not problems and sorted(Path(r.file).name for r in records["train"]) == ["a.png", "b.png"]
    listed = [w for w in warns if w.startswith(f"{tmp_path / 'train.txt'}: ")]
    assert len(listed) == 2 and "1 line(s) are written with Windows '\\' separators" in listed[0]
    assert "1 line(s) are absolute Windows paths" in listed[1] and str(tmp_path / "images/train/b.png") in listed[1]
    (tmp_path / "train.txt").write_text("images\\train\\c.png\n")
    data.write_text(data.read_text().replace("val: images/train", "val: images\\val"))
    *_, problems, _ = read_records(DataConfig(root=str(data)))
    assert sorted(problems) == [
        f"{tmp_path / 'images/val'}: image folder or list not found ('val: images\\val' in {data}; 'images\\val' is not "
        f"under {tmp_path} as written, nor with its Windows '\\' read as folder separators)",
        f"{tmp_path / 'train.txt'}:1: image images\\train\\c.png not found ({tmp_path / 'images/train/c.png'}); "
        f"'images\\train\\c.png' is not under {tmp_path} as written, nor with its Windows '\\' read as folder separators"]


def _label_path_by_parts(image: Path) -> Path:
    """The rule as first written (``Path.parts``): what the string version must give."""
    parts = list(image.parts)
    folders = [i for i, p in enumerate(parts[:-1]) if p == "images"]
    if folders:
        parts[folders[-1]] = "labels"
    return Path(*parts).with_suffix(".txt")


@pytest.mark.parametrize("image", ["/d/images/train/a.jpg", "images/a.jpg", "/images/a.jpg", "a.jpg", "/d/images/x/images/a.b.jpg",
                                   "/d/myimages/a.jpg", "/d/images/imagesx/a.png", "/d/images/.hidden.jpg", "../images/a.JPG",
                                   "/images/images/images.jpg", "/d/images/a b/c d.jpeg", "d/images"])
def test_label_path_by_strings_is_the_rule_by_parts(image):
    assert label_path(Path(image)) == _label_path_by_parts(Path(image))


def test_reading_a_split_computes_each_label_path_once(tmp_path, monkeypatch):
    """Was 4-5 times per image (orphans, shared labels twice, the record twice): 80k images, ~900k Paths."""
    from retinanet.data import yolo

    data = tiny_yolo(tmp_path, {f"im{i}": "0 0.5 0.5 0.2 0.2\n" for i in range(6)} | {"nolabel": None})
    calls = []
    counting = lambda p: calls.append(p) or _label_path_by_parts(p)  # noqa: E731
    monkeypatch.setattr(yolo, "label_path", counting)
    records, *_ = read_records(DataConfig(root=str(data)), splits=("train",))
    assert len(records["train"]) == 7 and sum(len(r.labels) for r in records["train"]) == 6
    assert len(calls) == 7 + 1  # each image, and the labels folder of the one images folder


def test_a_label_file_whose_name_differs_from_its_image_in_case_only_says_so(tmp_path):
    """Made on Windows or macOS (case-insensitive names), read on Linux: IMG_1.png and img_1.txt."""
    data = tiny_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "images" / "train" / "a.png").rename(tmp_path / "images" / "train" / "A.png")
    report = check_dataset(DataConfig(root=str(data)), progress=False)
    assert set(report.errors) == {f"{tmp_path / 'labels/train/a.txt'}: label file without its image (no a.* image in "
                                  f"{tmp_path / 'images/train'}; its image A.png differs in letter case only (names are "
                                  "case-sensitive here, unlike on Windows and macOS): rename one to match)"}  # train = val
