"""``check_dataset`` / ``retinanet check-data`` on datasets with planted problems."""

from __future__ import annotations

import shutil

import pytest

from voc_fixtures import make_voc, obj, write_image, xml_text

from retinanet.cli import main
from retinanet.config import DataConfig
from retinanet.data import check_dataset


def test_clean_synthetic_is_ok(synthetic, capsys):
    report = check_dataset(DataConfig(root=str(synthetic)), progress=False)
    assert report.ok and not report.errors and not report.warnings
    assert report.splits["train"].images == 8 and report.splits["val"].images == 4
    s = report.splits["train"]
    assert sum(s.per_class.values()) == s.objects == sum(s.sizes.values()) > 0
    assert main(["check-data", "--data", str(synthetic), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train: 8 images" in out and "small" in out and "OK" in out


def test_planted_problems(tmp_path, capsys):
    voc = make_voc(tmp_path, {
        "train": [("a", [obj("cat")]), ("dup", [obj("cat")]), ("both", [obj("dog")]), ("empty", []), ("wrongsize", [obj("cat")]),
                  ("corrupt", [obj("cat")]), ("outside", [obj("cat", (50, 50, 120, 60))])],
        "val": [("both", [obj("dog")]), ("v", [obj("cat", (1, 1, 40, 40)), obj("dog", (1, 1, 60, 64), difficult=1)])],
    })
    shutil.copy(voc / "JPEGImages" / "a.jpg", voc / "JPEGImages" / "dup.jpg")
    write_image(voc / "JPEGImages" / "wrongsize.jpg", (50, 50))
    (voc / "JPEGImages" / "corrupt.jpg").write_bytes(b"garbage")
    report = check_dataset(DataConfig(root=str(tmp_path)), progress=False)
    assert not report.ok
    assert len(report.errors) == 1 and "corrupt.jpg: cannot decode image" in report.errors[0]
    warnings = "\n".join(report.warnings)
    assert "duplicate images (same content)" in warnings and "a.jpg" in warnings and "dup.jpg" in warnings
    assert "the same image is in splits train and val" in warnings and "both.jpg" in warnings
    assert "wrongsize.xml: <size> says 80x64 (WxH) but" in warnings and "is 50x50" in warnings
    assert "outside.xml: 1 box(es) extend outside" in warnings
    assert "train: 1 image(s) with no objects: empty.jpg" in warnings
    train, val = report.splits["train"], report.splits["val"]
    assert (train.images, train.objects, train.empty_images) == (7, 6, 1)
    assert (val.objects, val.ignored, val.sizes["small"], val.sizes["medium"]) == (2, 1, 1, 1)  # the difficult dog apart
    assert main(["check-data", "--data", str(tmp_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "NOT OK" in out and "corrupt.jpg" in out


def test_crowd_and_difficult_regions_are_counted_apart_from_the_objects(tmp_path, capsys):
    """The size classes, the class table, the object count and "images with no objects" counted
    COCO crowd and VOC difficult regions as objects (a 150 px crowd was a "large" object), though
    they are neither trained nor scored as objects, and the anchor counts already left them out."""
    import json

    from voc_fixtures import write_image

    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    im = lambda i: {"id": i, "file_name": f"{i:012d}.jpg", "height": 200, "width": 200}  # noqa: E731
    anns = {"train": [{"id": 1, "image_id": 1, "category_id": 18, "bbox": [10, 5, 20, 30], "iscrowd": 0},
                      {"id": 2, "image_id": 1, "category_id": 1, "bbox": [40, 40, 150, 150], "iscrowd": 1},
                      {"id": 3, "image_id": 2, "category_id": 1, "bbox": [70, 50, 30, 30], "iscrowd": 0}],
            "val": [{"id": 9, "image_id": 7, "category_id": 18, "bbox": [0, 0, 120, 120], "iscrowd": 1}]}
    (tmp_path / "annotations").mkdir()
    for split, ids in (("train", (1, 2)), ("val", (7,))):
        for i in ids:
            write_image(tmp_path / f"{split}2017" / im(i)["file_name"], (200, 200), seed=i)
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": [im(i) for i in ids], "annotations": anns[split], "categories": cats}))
    root = tmp_path / "annotations" / "instances_train2017.json"
    report = check_dataset(DataConfig(root=str(root), train_split="train2017", val_split="val2017"), progress=False)
    train, val = report.splits["train"], report.splits["val"]
    assert (train.objects, train.ignored, dict(train.sizes), dict(train.per_class)) == (2, 1, {"small": 2}, {"dog": 1, "person": 1})
    assert train.ignored_per_class == {"person": 1} and train.empty_images == 0
    assert (val.objects, val.ignored, sum(val.sizes.values()), val.empty_images, val.ignored_only) == (0, 1, 0, 1, 1)
    text = report.summary()
    assert "train: 2 images, 2 objects (and 1 difficult/crowd ignore region(s), left out of every count here)" in text
    assert "  objects: small 2, medium 0, large 0" in text and "  person 1 (+1 ignored)" in text
    assert "\n  dog 0 (+1 ignored)\n" in text  # val: a class with ignore regions alone is listed
    assert "val: 1 image(s) with no objects: 000000000007.jpg (1 of them with difficult/crowd ignore regions only)" in text


def test_coco_size_classes_count_the_area_field_as_eval_does(tmp_path):
    """check-data classed objects by box area while COCO eval (pycocotools) classes them by the
    annotation's ``area`` (the mask's on COCO): a 100x100 box of area 900 was "large" to
    check-data and small to APs. The stated area counts (the box's where there is none), and the
    line says so; VOC and YOLO keep box areas."""
    import json

    from voc_fixtures import write_image

    from retinanet.data import build_datasets
    from retinanet.engine.evaluate.coco import coco_ground_truth
    from retinanet.engine.evaluate.loop import _gt_record

    im = {"id": 1, "file_name": "000000000001.jpg", "height": 300, "width": 300}
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100], "area": 900.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [150, 150, 40, 40], "area": 9500.0, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [20, 200, 50, 50], "iscrowd": 0}]  # none: the bbox's 2500
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        write_image(tmp_path / f"{split}2017" / im["file_name"], (300, 300), seed=1)
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": [im], "annotations": anns, "categories": [{"id": 1, "name": "person"}]}))
    root = tmp_path / "annotations" / "instances_train2017.json"
    cfg = DataConfig(root=str(root), train_split="train2017", val_split="val2017")
    report = check_dataset(cfg, progress=False)
    assert dict(report.splits["train"].sizes) == dict(report.splits["val"].sizes) == {"small": 1, "medium": 1, "large": 1}
    assert "  objects: small 1, medium 1, large 1  (by each annotation's area field, as COCO eval's APs/APm/APl" in (
        report.summary())  # box areas: small 0, medium 2, large 1 (100x100, 40x40, 50x50)
    # the areas eval hands pycocotools (its ground truth of the val split) are the ones counted
    image, target = build_datasets(cfg, min_size=64, max_size=80, splits=("val",)).val[0]
    gt = coco_ground_truth([_gt_record(target, tuple(image.shape[-2:]))], [0])
    assert [a["area"] for a in gt["annotations"]] == [900.0, 9500.0, 2500.0]


def test_unreadable_annotations_are_errors(tmp_path, capsys):
    voc = make_voc(tmp_path, {"train": [("a", [obj("cat")]), ("b", [obj("cat")])], "val": [("c", [obj("cat")])]})
    (voc / "Annotations" / "b.xml").write_text(xml_text("b.jpg", (64, 80), [obj("cat")])[:-5])
    (voc / "JPEGImages" / "c.jpg").unlink()
    report = check_dataset(DataConfig(root=str(tmp_path)), progress=False)
    assert not report.ok and len(report.errors) == 2
    assert any("b.xml: malformed XML" in e for e in report.errors) and any("c.jpg: image file missing" in e for e in report.errors)
    assert main(["check-data", "--data", str(tmp_path / "nope"), "--quiet"]) == 1
    assert "nope: dataset not found" in capsys.readouterr().out


def test_a_dataset_whose_reading_stops_is_still_named_by_its_kind(tmp_path, capsys):
    """A YOLO data.yaml whose `nc` and `names` disagree was reported as "dataset ... (format not
    known: reading stopped)": the kind is known, its annotations are what stopped the reading."""
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text("train: images\nval: images\nnc: 3\nnames: [cat, dog]\n")
    assert main(["check-data", "--data", str(tmp_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "(yolo: reading stopped)" in out and "'nc: 3' but 'names:' has 2 classes" in out
    assert check_dataset(DataConfig(root=str(tmp_path / "nope")), progress=False).format == "format not known: reading stopped"


def test_data_options_to_config():
    from retinanet.cli import build_parser, data_config_from_args

    args = build_parser().parse_args(["check-data", "--data", "d", "--year", "2007", "--year", "2012", "--train-split", "trainval",
                                      "--skip-bad"])
    cfg = data_config_from_args(args, workers=0)
    assert cfg == DataConfig(root="d", years=("2007", "2012"), train_split="trainval", skip_bad=True, workers=0)
    with pytest.raises(SystemExit):  # augmentation is a training option only
        build_parser().parse_args(["check-data", "--data", "d", "--photometric"])
    # evaluation scores difficult / crowd objects as ignore regions always: --train-difficult is train's alone
    for command in (["check-data"], ["eval", "--weights", "w.pt"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--data", "d", "--train-difficult"])
    assert build_parser().parse_args(["train", "--data", "d", "--train-difficult"]).train_difficult is True


def test_check_data_out_writes_report_and_plots(synthetic, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "check"
    assert main(["check-data", "--data", str(synthetic), "--out", str(out), "--min-size", "192", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert (out / "report.txt").read_text().strip() in printed  # the same text as printed
    assert "are too small for the smallest anchor (32 px at min_size 192" in printed
    for name in ("instances_per_class.png", "box_sizes.png", "image_sizes.png"):
        assert Image.open(out / name).size[0] >= 600 and name in printed
    broken = tmp_path / "check_broken"
    assert main(["check-data", "--data", str(tmp_path / "none"), "--out", str(broken), "--quiet"]) == 1
    assert (broken / "report.txt").exists() and not (broken / "box_sizes.png").exists()


def test_model_box_sizes_and_anchor_shapes():
    import numpy as np

    from retinanet.data.check import anchor_shapes, model_box_sizes
    from retinanet.data.records import Record

    def rec(file, boxes, size):
        b = np.array(boxes, np.float32)
        return Record(file, b, np.ones(len(b), np.int64), np.zeros(len(b), bool), 0, size, file)

    records = [rec("a.jpg", [[0, 0, 20, 10]], (100, 200)), rec("b.jpg", [[10, 10, 40, 30]], None)]
    # a: 100x200 -> 400x800 at min_size 400 (x4); b: decoded 50x50 -> 400x400 (x8); c: no size: left out
    wh = model_box_sizes(records + [rec("c.jpg", [[0, 0, 5, 5]], None)], {"b.jpg": (50, 50)}, 400, 1333)
    np.testing.assert_allclose(wh, [[80, 40], [240, 160]])
    shapes = anchor_shapes((32, 64))
    assert shapes.shape == (2 * 3 * 3, 2)
    np.testing.assert_allclose(shapes[1], [32, 32])  # size 32, ratio 1
    np.testing.assert_allclose(np.sqrt(shapes.prod(axis=1))[[1, 4, 7]], [32, 40, 50])  # int(32 * 2^(k/3))
    np.testing.assert_allclose(shapes[0, 1] / shapes[0, 0], 0.5)  # ratio h / w


def test_anchor_hint_counts_boxes_too_small_and_suggests_sizes(tmp_path, capsys):
    import numpy as np

    from retinanet.data.check import CheckReport, anchor_hint, count_too_small, split_box_sizes
    from retinanet.data.classes import ClassMap
    from retinanet.data.records import Record

    def rec(file, side):
        return Record(file, np.array([[0, 0, side, side]], np.float32), np.ones(1, np.int64), np.zeros(1, bool), 0, (100, 100), file)

    # at min_size 100 (scale 1): sides 10, 20 are under 32 / sqrt(2) = 22.6, sides 30, 60 are not
    report = CheckReport(root="d", format="voc", class_map=ClassMap.discover(["a"]))
    report.records["train"] = [rec(f"{s}.jpg", s) for s in (10, 20, 30, 60)]
    for size, small in ((100, 2), (200, 1)):  # scaled x2: only 10 -> 20 stays too small
        wh = split_box_sizes(report, size, size)["train"]
        assert len(wh) == 4 and count_too_small(wh, (32, 64, 128, 256, 512)) == small
    hint = anchor_hint(report, 100, 100, (32, 64, 128, 256, 512))
    # 24 (under 17 px) and 16 (under 11.3 px) still leave the 10 px box; 12 (under 8.5 px) does not
    assert "2 of 4 boxes (50.0%)" in hint and "--anchor-sizes 12 24 48 96 192 (or --min-size 256 --max-size 256)" in hint
    assert count_too_small(split_box_sizes(report, 256, 256)["train"], (32, 64, 128, 256, 512)) == 0  # the input that fits
    assert "--anchor-sizes 24 48 96 192 384" in anchor_hint(report, 100, 100, (32, 64, 128, 256, 512), too_many=0.3)
    assert "--anchor-sizes" not in anchor_hint(report, 100, 100, (32, 64, 128, 256, 512), too_many=0.5)
    report.records["train"] = [rec(f"{s}.jpg", s) for s in (4, 5, 6, 60)]
    # no smaller anchors suffice: concrete sizes, the input at which the smallest suggested ones (8 px) fit
    assert anchor_hint(report, 100, 100, (32, 64, 128, 256, 512)).endswith(
        ": train with --min-size 160 --max-size 160 --anchor-sizes 8 16 32 64 128")
    assert count_too_small(split_box_sizes(report, 160, 160)["train"], (8, 16, 32, 64, 128)) == 0


def test_check_data_prints_the_anchor_line_without_out(synthetic, capsys):
    assert main(["check-data", "--data", str(synthetic), "--min-size", "192", "--quiet"]) == 0
    assert "are too small for the smallest anchor (32 px at min_size 192" in capsys.readouterr().out


def test_training_warns_when_most_boxes_are_too_small_for_the_anchors():
    import numpy as np

    from retinanet.data.check import too_small_for_anchors
    from retinanet.data.records import Record

    def rec(file, side, size=(100, 100)):
        return Record(file, np.array([[0, 0, side, side]], np.float32), np.ones(1, np.int64), np.zeros(1, bool), 0, size, file)

    records = [rec(f"{s}.jpg", s) for s in (10, 20, 30, 60)]
    sizes = [(100, 100)] * 4
    said = too_small_for_anchors(records, sizes, 100, 100, (32, 64, 128, 256, 512))
    assert said.startswith("2 of the 4 training boxes (50.0%) are too small for the smallest anchor (32 px at min_size 100")
    assert "--anchor-sizes 12 24 48 96 192" in said
    assert too_small_for_anchors(records, sizes, 200, 200, (32, 64, 128, 256, 512), too_many=0.3) == ""  # x2: 1 of 4
    assert "native resolution" in too_small_for_anchors(records, sizes, 200, 200, (32, 64, 128, 256, 512), native=True)
    assert "(or --min-size 256 --max-size 256)" in said  # whole images: a larger input is a remedy too
    unknown = [rec(f"{s}.jpg", s, size=None) for s in (10, 20, 30, 60)]
    assert too_small_for_anchors(unknown, [None] * 4, 100, 100, (32, 64, 128, 256, 512)) == ""  # sizes unknown: no claim
    # crowd/difficult regions are never matched to anchors: not counted (were: 24 crowd boxes in "0 of 1624 boxes")
    crowded = [Record(f"{s}.jpg", np.array([[0, 0, s, s], [0, 0, 8, 8], [0, 0, 9, 9]], np.float32), np.ones(3, np.int64),
                      np.array([False, True, True]), 0, (100, 100), f"{s}.jpg") for s in (10, 20, 30, 60)]
    assert too_small_for_anchors(crowded, sizes, 100, 100, (32, 64, 128, 256, 512)).startswith("2 of the 4 training boxes")
    # but a run with --train-difficult trains them as objects: counted (were left out there too)
    assert too_small_for_anchors(crowded, sizes, 100, 100, (32, 64, 128, 256, 512),
                                 ignore_as_objects=True).startswith("10 of the 12 training boxes")


def test_crop_training_anchor_advice_is_anchors_alone():
    """--crop trains at native resolution and refuses another --min-size: the warning said "train with
    --anchor-sizes 24 48 96 192 384 (or a larger --min-size)", and --crop 64 --min-size 128 is refused.
    At native resolution only smaller anchors help."""
    import numpy as np

    from retinanet.data.check import too_small_for_anchors
    from retinanet.data.records import Record

    def rec(file, side):
        return Record(file, np.array([[0, 0, side, side]], np.float32), np.ones(1, np.int64), np.zeros(1, bool), 0,
                      (100, 100), file)

    default = (32, 64, 128, 256, 512)
    said = too_small_for_anchors([rec(f"{s}.jpg", s) for s in (10, 20, 30, 60)], [(100, 100)] * 4, 64, 64, default,
                                 native=True)
    assert "(32 px at native resolution (crops)" in said and ": train with --anchor-sizes 12 24 48 96 192;" in said
    assert "--min-size" not in said and "--crop" not in said
    # too small even for the smallest anchors suggested: those, and what they leave, still no input size
    said = too_small_for_anchors([rec(f"{s}.jpg", s) for s in (3, 4, 5, 60)], [(100, 100)] * 4, 64, 64, default, native=True)
    assert ": train with --anchor-sizes 8 16 32 64 128, the smallest suggested (3 of the 4 boxes (75.0%) are under 5.7 px" in said
    assert "--min-size" not in said
    said = too_small_for_anchors([rec(f"{s}.jpg", s) for s in (3, 4, 5, 60)], [(100, 100)] * 4, 64, 64, (8, 16, 32, 64, 128),
                                 native=True)
    assert "no smaller anchors are suggested (8 px at least): 3 of the 4 boxes" in said and "--min-size" not in said


def test_tile_hint_when_the_resize_makes_objects_too_small(tmp_path, capsys):
    import numpy as np

    from retinanet.cli import main
    from retinanet.data import make_synthetic
    from retinanet.data.check import CheckReport, tile_hint
    from retinanet.data.classes import ClassMap
    from retinanet.data.records import Record

    def rec(file, side, image):
        return Record(file, np.array([[0, 0, side, side]], np.float32), np.ones(1, np.int64), np.zeros(1, bool), 0,
                      (image, image), file)

    report = CheckReport(root="d", format="voc", class_map=ClassMap.discover(["a"]))
    # 2000 px images with 30..60 px objects: resized to 500 px they are 7..15 px, under 32 / sqrt(2)
    report.records["train"] = [rec(f"{s}.jpg", s, 2000) for s in (30, 40, 50, 60)]
    hint = tile_hint(report, 500, 500, (32, 64, 128, 256, 512))
    assert "4 of 4 boxes (100.0%)" in hint and "0 (0.0%) at native" in hint
    assert "train --crop 480, predict/eval --tile 480" in hint and "lower --anchor-sizes" not in hint
    assert tile_hint(report, 2000, 2000, (32, 64, 128, 256, 512)) is None  # no downscaling: nothing to tile
    report.records["train"] = [rec(f"{s}.jpg", s, 2000) for s in (10, 12, 40, 60)]  # two tiny even natively
    # the anchors for them at native resolution (the crops' scale), in the train command itself
    assert "train --crop 480 --anchor-sizes 12 24 48 96 192, predict/eval --tile 480" in tile_hint(report, 500, 500, (32, 64, 128, 256, 512))
    report.records["train"] = [rec(f"{s}.jpg", s, 2000) for s in (3, 4, 40, 60)]  # too tiny for any anchor offered
    hint = tile_hint(report, 500, 500, (32, 64, 128, 256, 512))  # the smallest suggested, named, and what they leave
    assert "2 (50.0%) there even with --anchor-sizes 8 16 32 64 128 (the smallest suggested" in hint
    assert "train --crop 480 --anchor-sizes 8 16 32 64 128, predict/eval --tile 480" in hint
    report.records["train"] = [rec(f"{s}.jpg", s, 2000) for s in (4, 5, 6, 60)]  # small natively: not tiling's job
    assert tile_hint(report, 500, 500, (32, 64, 128, 256, 512)) is None
    # the command prints it for the large synthetic set at its default input size
    make_synthetic(tmp_path / "big", num_train=1, num_val=1, image_size=1200, object_size=(12, 48), objects=30)
    assert main(["check-data", "--data", str(tmp_path / "big"), "--quiet"]) == 0
    assert "train --crop 800 --anchor-sizes 24 48 96 192 384, predict/eval --tile 800" in capsys.readouterr().out


def test_tile_hint_for_objects_too_small_for_the_default_anchors_even_natively():
    """4000 x 3000 aerial photos with 8..20 px objects: resized to 800 px they are 2..5 px, under any
    anchor; natively they are under 32 / sqrt(2) too, but fit 8 px anchors. The hint was suppressed
    (counted with 32 px anchors at both scales) exactly when the objects were tiniest, and the anchor
    line named no sizes."""
    import numpy as np

    from retinanet.data.check import CheckReport, anchor_hint, count_too_small, split_box_sizes, tile_hint
    from retinanet.data.classes import ClassMap
    from retinanet.data.records import Record

    sides = [8, 10, 12, 14, 16, 18, 20] * 3
    boxes = np.array([[40 * i, 40 * i, 40 * i + s, 40 * i + s] for i, s in enumerate(sides)], np.float32)
    record = Record("a.jpg", boxes, np.ones(len(boxes), np.int64), np.zeros(len(boxes), bool), 0, (3000, 4000), "a.jpg")
    report = CheckReport(root="d", format="voc", class_map=ClassMap.discover(["a"]))
    report.records["train"] = [record]
    default = (32, 64, 128, 256, 512)
    hint = tile_hint(report, 800, 1333, default)
    assert hint is not None and "21 of 21 boxes (100.0%)" in hint and "21 (100.0%) at native resolution" in hint
    # 24 leaves 8..16 px too small, 16 the 8 and 10 px ones (29%), 12 only the 8 px ones (14% <= 15%)
    assert "3 (14.3%) there with --anchor-sizes 12 24 48 96 192" in hint
    assert "train --crop 800 --anchor-sizes 12 24 48 96 192, predict/eval --tile 800" in hint
    line = anchor_hint(report, 800, 1333, default)  # whole resized images: the input at which 8 px anchors fit
    assert line.endswith("train with --min-size 1728 --max-size 2848 --anchor-sizes 8 16 32 64 128")
    assert count_too_small(split_box_sizes(report, 1728, 2848)["train"], (8, 16, 32, 64, 128)) <= 0.15 * 21
    assert count_too_small(split_box_sizes(report, 1696, 2848)["train"], (8, 16, 32, 64, 128)) > 0.15 * 21  # 32 px less: short


def test_an_empty_training_split_is_an_error_it_names(tmp_path):
    """Not "0 errors ... NOT OK: fix the errors above": the reason is listed."""
    voc = make_voc(tmp_path, {"train": [("a", [obj()])], "val": [("b", [obj()])]})
    (voc / "ImageSets" / "Main" / "train.txt").write_text("\n")
    report = check_dataset(DataConfig(root=str(tmp_path)), progress=False)
    assert not report.ok and report.errors and report.errors[-1].endswith("the training split 'train' has no usable images")
    assert "0 errors" not in report.summary()


def test_each_image_file_is_read_once(synthetic, monkeypatch):
    """The hash and the decode share one read (check-data read every image twice)."""
    import builtins
    import io

    opened = []
    for module in (builtins, io):
        real = module.open
        def counting(file, *args, real=real, **kwargs):
            if str(file).endswith(".jpg"):
                opened.append(str(file))
            return real(file, *args, **kwargs)
        monkeypatch.setattr(module, "open", counting)
    report = check_dataset(DataConfig(root=str(synthetic)), progress=False)
    assert report.ok and len(opened) == 12 and len(set(opened)) == 12


def test_many_duplicates_print_a_few_names_and_list_them_all_in_out(tmp_path, capsys):
    """100k copies of one image printed a 5.36 MB line: now a few names with counts, and the whole
    list in duplicates.txt that the warning names."""
    voc = make_voc(tmp_path / "data", {"train": [(f"a{i:02d}", [obj("cat")]) for i in range(12)]
                                               + [(f"b{i}", [obj("cat")]) for i in range(7)] + [("c", [obj("cat")])],
                                       "val": [(f"v{i}", [obj("dog")]) for i in range(8)]})
    images = voc / "JPEGImages"
    for i in range(1, 12):
        shutil.copy(images / "a00.jpg", images / f"a{i:02d}.jpg")
    for i in range(7):  # 7 groups of 2: b_i and v_i, each group in both splits
        shutil.copy(images / f"b{i}.jpg", images / f"v{i}.jpg")
    out = tmp_path / "check"
    assert main(["check-data", "--data", str(tmp_path / "data"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert max(line.count(".jpg") for line in printed.splitlines()) == 5  # per line (report and plots: none)
    assert f"{images / 'a03.jpg'}, {images / 'a04.jpg'} and 7 more (12 files)" in printed
    assert f"duplicate images (same content): {images / 'b0.jpg'}, {images / 'v0.jpg'}\n" in printed
    assert f"the same image is in splits train and val: {images / 'b0.jpg'}, {images / 'v0.jpg'}\n" in printed
    assert f"duplicate images (same content): 8 group(s), 26 files in all; 3 more group(s) not shown; the whole list: {out / 'duplicates.txt'}" in printed
    assert f"images in more than one split: 7 group(s), 14 files in all; 2 more group(s) not shown; the whole list: {out / 'duplicates.txt'}" in printed
    listed = (out / "duplicates.txt").read_text()
    assert all(f"a{i:02d}.jpg\n" in listed for i in range(12)) and all(f"v{i}.jpg\n" in listed for i in range(7))
    assert "same content, 12 file(s), split(s) train:" in listed and "split(s) train, val:" in listed
    report = check_dataset(DataConfig(root=str(tmp_path / "data")), progress=False)  # no --out: says how to get it
    assert any(w.endswith("check-data --out DIR writes the whole list") for w in report.warnings)


def test_a_thousand_classes_print_the_ends_of_the_table_by_count_then_id_and_plot_the_most_frequent(tmp_path):
    """1,000 classes printed 2,000 lines sorted as text (klasse_10 before klasse_100) and drew a
    700x31,252 px figure."""
    from PIL import Image

    from retinanet.data.check import write_check_outputs

    names = [f"klasse_{i}" for i in range(1, 201)]
    items = [(f"im{i}", [obj(n) for n in names[: (1 if i else 200)]] + [obj("klasse_100")] * (i == 1)) for i in range(3)]
    voc = make_voc(tmp_path / "data", {"train": items, "val": items[:1]})
    cfg = DataConfig(root=str(tmp_path / "data"), classes=str(_class_file(tmp_path, names)))
    report = check_dataset(cfg, progress=False)
    assert report.ok, report.errors
    printed, full = report.summary(), report.summary(full=True)
    train = printed.split("\ntrain:")[1].split("\nval:")[0].splitlines()[2:]
    assert [ln.split()[0] for ln in train[:5]] == ["klasse_1", "klasse_100", "klasse_2", "klasse_3", "klasse_4"]  # 3, 2, 1, 1, 1
    assert train[5] == "  ... 190 classes (all of them in report.txt with --out)"
    assert [ln.split()[0] for ln in train[6:]] == ["klasse_196", "klasse_197", "klasse_198", "klasse_199", "klasse_200"]
    assert len(printed.splitlines()) < 60 and len(full.splitlines()) > 400
    assert "klasse_10=10 ... klasse_199=199, klasse_200=200 (200 in all; all of them in report.txt with --out)" in printed
    assert "klasse_150=150" in full and "klasse_150 " in full
    paths = write_check_outputs(report, tmp_path / "out", min_size=64, max_size=64, anchor_sizes=(32, 64, 128, 256, 512))
    assert (tmp_path / "out" / "report.txt").read_text() == full + "\n"
    w, h = Image.open(tmp_path / "out" / "instances_per_class.png").size
    assert h < 1500, (w, h)  # 40 classes drawn (was 4,500 px for 200)
    assert "train (203)" in _legend_texts(report)  # the split's objects, not the plotted ones'
    assert tmp_path / "out" / "instances_per_class.png" in paths


def _class_file(tmp_path, names):
    path = tmp_path / "classes.json"
    path.write_text(__import__("json").dumps({n: i for i, n in enumerate(names, 1)}))
    return path


def _legend_texts(report) -> list[str]:
    from retinanet.data.check import class_counts_figure

    return [t.get_text() for t in class_counts_figure(report).legends[0].get_texts()]


def test_images_with_more_objects_than_max_dets_are_named_with_a_cap_that_holds_them(tmp_path, capsys):
    """A shelf of 500 objects under the default 300 detections per image lost 200 at the cap, and
    check-data said nothing about it."""
    from retinanet.cli import main
    from retinanet.data import make_synthetic

    make_synthetic(tmp_path / "crowd", num_train=1, num_val=1, image_size=400, object_size=(12, 14), objects=320)
    assert main(["check-data", "--data", str(tmp_path / "crowd"), "--quiet"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("crowded: "))
    assert "1 train, 1 val image(s) hold more objects than the 300 detections kept per image (--max-dets)" in line
    assert "train_00000.jpg" in line and "train/eval/predict --max-dets 700" in line, line
    assert main(["check-data", "--data", str(tmp_path / "crowd"), "--quiet", "--max-dets", "700"]) == 0
    assert "crowded:" not in capsys.readouterr().out
