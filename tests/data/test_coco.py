"""COCO JSON: xywh boxes, category ids as class ids, crowd regions, file naming rules."""

from __future__ import annotations

import json

import pytest
from voc_fixtures import write_image

from retinanet.config import DataConfig
from retinanet.data import build_datasets
from retinanet.errors import DataError

SIZES = {"min_size": 64, "max_size": 80}
CATS = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]


def _write(root, split, images, anns, cats=CATS):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for im in images:
        write_image(root / f"{split}2017" / im["file_name"], (im["height"], im["width"]), seed=im["id"])
    path = root / "annotations" / f"instances_{split}2017.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.fixture
def coco(tmp_path):
    im = lambda i: {"id": i, "file_name": f"{i:012d}.jpg", "height": 64, "width": 80}  # noqa: E731
    train = _write(tmp_path, "train", [im(1), im(2)], [
        {"id": 1, "image_id": 1, "category_id": 18, "bbox": [10, 5, 20, 30], "iscrowd": 0, "area": 600},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [40, 10, 30, 40], "iscrowd": 1, "area": 1200},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [70, 50, 30, 30], "iscrowd": 0, "area": 900},
    ])
    _write(tmp_path, "val", [im(7)], [{"id": 9, "image_id": 7, "category_id": 1, "bbox": [0, 0, 8, 8], "iscrowd": 1}])
    return train


def test_coco_items(coco):
    ds = build_datasets(DataConfig(root=str(coco), train_split="train2017", val_split="val2017", hflip_prob=0.0), **SIZES)
    assert ds.format == "coco" and ds.class_map.to_dict() == {"person": 1, "dog": 18} and ds.class_map.num_classes == 19
    _, t = ds.train[0]
    assert t["image_id"] == 1 and t["labels"].tolist() == [18, 1] and t["boxes"].tolist() == [[10, 5, 30, 35], [40, 10, 70, 50]]
    assert t["ignore"].tolist() == [False, True]  # the crowd box: an ignore region for the loss
    _, t = ds.train[1]
    assert t["boxes"].tolist() == [[70, 50, 80, 64]]  # clipped to the image
    _, t = ds.val[0]
    assert t["image_id"] == 7 and t["ignore"].tolist() == [True] and t["file"].endswith("val2017/000000000007.jpg")


def test_val_json_given_as_path(coco, tmp_path):
    val = tmp_path / "annotations" / "instances_val2017.json"
    ds = build_datasets(DataConfig(root=str(coco), val_split=str(val)), **SIZES)
    assert len(ds.val) == 1


def test_coco_problems_are_reported(coco, tmp_path):
    data = json.loads(coco.read_text())
    data["annotations"].append({"id": 4, "image_id": 2, "category_id": 99, "bbox": [1, 1, 5, 5]})
    data["annotations"].append({"id": 5, "image_id": 42, "category_id": 1, "bbox": [1, 1, 5, 5]})
    data["images"].append({"id": 3, "file_name": "gone.jpg", "height": 64, "width": 80})
    coco.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(root=str(coco), train_split="train2017", val_split="val2017"), **SIZES)
    text = str(err.value)
    assert "image 2: annotation(s) [4] have categories not in the class map" in text and "id 99 (not in 'categories')" in text
    assert "annotation(s) [5] refer to image id 42" in text and "gone.jpg: image file missing" in text
    assert str(coco) in text


def test_missing_or_broken_json(tmp_path):
    with pytest.raises(DataError, match="instances_train2017.json: dataset not found"):
        build_datasets(DataConfig(root=str(tmp_path / "instances_train2017.json"), format="coco"), **SIZES)
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="x.json: not a COCO instances file"):
        build_datasets(DataConfig(root=str(tmp_path / "x.json")), **SIZES)


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _build(path, **kw):
    return build_datasets(DataConfig(root=str(path), train_split="train2017", val_split="val2017", hflip_prob=0.0, **kw), **SIZES)


def test_repeated_image_id_is_an_error_and_skip_bad_leaves_both_out(coco):
    _edit(coco, lambda d: d["images"].append({"id": 1, "file_name": "000000000002.jpg", "height": 64, "width": 80}))
    with pytest.raises(DataError) as err:
        _build(coco)
    assert len(err.value.problems) == 1, err.value.problems
    msg = err.value.problems[0]
    assert str(coco) in msg and "image id 1 is repeated" in msg and "images[0] 000000000001.jpg" in msg and "images[2] 000000000002.jpg" in msg
    with pytest.warns(UserWarning, match="skipped: .*image id 1 is repeated"):
        ds = _build(coco, skip_bad=True)
    assert [r.image_id for r in ds.train.records] == [2]  # neither image 1 gets the union of the boxes


def test_one_file_under_two_image_ids_is_an_error_and_skip_bad_leaves_both_out(coco):
    _edit(coco, lambda d: d["images"].append({"id": 7, "file_name": "000000000001.jpg", "height": 64, "width": 80}))
    with pytest.raises(DataError) as err:
        _build(coco)
    assert err.value.problems == [f"{coco}: file_name '000000000001.jpg' is listed under several image ids (images[0] id 1, "
                                  "images[2] id 7): its objects are split between them, and each would train with the "
                                  "others' objects as background; give each image one entry"]
    with pytest.warns(UserWarning, match="skipped: .*file_name '000000000001.jpg' is listed under several image ids"):
        ds = _build(coco, skip_bad=True)
    assert [r.image_id for r in ds.train.records] == [2]


def test_repeated_annotation_id_is_an_error(coco):
    _edit(coco, lambda d: d["annotations"].append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}))
    with pytest.raises(DataError, match=r"annotation id 1 is repeated \(2 times, image\(s\) \[1\]\)") as err:
        _build(coco)
    assert str(coco) in str(err.value)
    with pytest.warns(UserWarning, match="skipped: .*annotation id 1 is repeated"):
        ds = _build(coco, skip_bad=True)
    assert [r.image_id for r in ds.train.records] == [2]


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["categories"][1].pop("name"), "categories[1] (id 18): 'name' is missing"),
    (lambda d: d["categories"].append({"id": 1, "name": "again"}), "category id 1 is repeated (categories[0, 2])"),
    (lambda d: d["annotations"].__setitem__(1, None), "annotations[1] is null, not an object"),
    (lambda d: d["annotations"][0].pop("bbox"), "annotations[0] (id 1) of image 1: no 'bbox'"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]), "annotations[0] (id 1) of image 1: 'bbox' is [1, 2, 3], not [x, y, width, height]"),
    (lambda d: d["annotations"][2].pop("image_id"), "annotations[2] (id 3): 'image_id' is missing"),
    (lambda d: d["annotations"][2].__setitem__("category_id", "dog"), "annotations[2] (id 3) of image 2: 'category_id' is missing or not an integer"),
    (lambda d: d["images"][0].pop("file_name"), "images[0] (id 1): 'file_name' is missing"),
    (lambda d: d["images"].__setitem__(1, "x.jpg"), "images[1] is a str, not an object"),
])
def test_malformed_entries_are_named(coco, change, needle):
    _edit(coco, change)
    with pytest.raises(DataError) as err:  # never a KeyError / AttributeError
        _build(coco)
    assert any(needle in p and str(coco) in p for p in err.value.problems), err.value.problems


def test_skip_bad_leaves_out_only_the_image_of_a_bad_annotation(coco):
    _edit(coco, lambda d: d["annotations"][2].pop("bbox"))  # annotation 3 belongs to image 2
    with pytest.warns(UserWarning, match=r"skipped: .*annotations\[2\] \(id 3\) of image 2: no 'bbox'"):
        ds = _build(coco, skip_bad=True)
    assert [r.image_id for r in ds.train.records] == [1]


def test_negative_or_zero_size_box_says_what_is_wrong(coco):
    def change(d):
        d["annotations"][0]["bbox"] = [40, 5, -20, 30]
        d["annotations"].append({"id": 8, "image_id": 2, "category_id": 1, "bbox": [10, 10, 5, 0]})
        d["annotations"].append({"id": 9, "image_id": 2, "category_id": 1, "bbox": [90, 10, 5, 5]})
    _edit(coco, change)
    with pytest.warns(UserWarning) as record:
        ds = _build(coco)
    text = "\n".join(str(w.message) for w in record)
    assert "annotation 1 [40, 5, -20, 30]: negative width -20" in text, text
    assert "annotation 8 [10, 10, 5, 0]: zero height" in text and "annotation 9 [90, 10, 5, 5]: no area inside the 80x64 (WxH) image" in text
    assert ds.train[0][1]["ignore"].tolist() == [True]  # only the crowd box of image 1 was left: an ignore region


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_bbox_is_a_problem_naming_the_annotation(coco, value):
    _edit(coco, lambda d: d["annotations"][0]["bbox"].__setitem__(2, value))  # json writes Infinity / NaN
    with pytest.raises(DataError) as err:  # today: Infinity became a box clipped to the image edge
        _build(coco)
    (problem,) = err.value.problems
    assert problem.startswith(f"{coco}: annotations[0] (id 1) of image 1: 'bbox' [10, 5, {value}, 30]: ")
    assert problem.endswith("is not a finite number")
    with pytest.warns(UserWarning, match="not a finite number"):
        ds = _build(coco, skip_bad=True)
    assert [r.image_id for r in ds.train.records] == [2]


def test_file_of_a_type_not_read_is_named_as_such(coco):
    from PIL import Image

    Image.new("RGB", (80, 64)).save(coco.parent.parent / "train2017" / "000000000002.gif")
    _edit(coco, lambda d: d["images"][1].update(file_name="000000000002.gif"))  # today: read (only COCO read it)
    with pytest.raises(DataError) as err:
        _build(coco)
    (problem,) = err.value.problems
    assert problem.startswith(f"{coco.parent.parent / 'train2017' / '000000000002.gif'}: not one of the image types read (")


def test_an_annotation_repeated_under_another_id_is_dropped_with_a_warning(coco):
    _edit(coco, lambda d: d["annotations"].append({"id": 5, "image_id": 1, "category_id": 18, "bbox": [10, 5, 20, 30], "iscrowd": 0}))
    with pytest.warns(UserWarning, match=r"image 1 \(000000000001.jpg\): dropped 1 repeated annotation\(s\) \[5\]"):
        ds = _build(coco)  # today: the dog twice, one of them a false negative no detection can match
    assert ds.train.records[0].labels.tolist() == [18, 1]


def test_a_given_class_map_is_matched_by_category_name_and_changed_ids_are_said(coco, tmp_path):
    """A checkpoint's map (or --classes) whose ids differ from the file's: objects keep their names."""
    from retinanet.data.build import read_records
    from retinanet.data.classes import ClassMap

    given = ClassMap({"dog": 1, "person": 2}, source="best.pt")
    records, class_map, _, _, problems, warns = read_records(
        DataConfig(root=str(coco), train_split="train2017", val_split="val2017"), class_map=given)
    assert not problems and class_map is given
    assert records["train"][0].labels.tolist() == [1, 2]  # dog (file id 18), person (file id 1)
    said = [w for w in warns if "category ids differ" in w]
    assert len(said) == 2 and "'person' 1 -> 2, 'dog' 18 -> 1" in said[0] and "(best.pt)" in said[0]
    # a map without one of the file's used categories: the images concerned are problems, named by category
    _, _, _, _, problems, _ = read_records(DataConfig(root=str(coco), train_split="train2017", val_split="val2017"),
                                           class_map=ClassMap({"person": 1}, source="m.json"))
    assert any("have categories not in the class map (m.json): 'dog' (id 18)" in p for p in problems)


def test_the_top_level_must_be_an_object_and_a_byte_order_mark_is_read(coco, tmp_path):
    bad = tmp_path / "list.json"
    bad.write_text('[{"id": 1}]')
    with pytest.raises(DataError, match="list.json: not a COCO instances file \\(the top level is a list"):
        build_datasets(DataConfig(root=str(bad)), **SIZES)
    coco.write_text("\ufeff" + coco.read_text(), encoding="utf-8")  # Windows editors write one
    assert len(_build(coco).train) == 2


def test_the_image_folder_is_where_most_images_are(tmp_path):
    """One missing file is one error, in the folder of the others (Roboflow: images beside the JSON)."""
    im = lambda i: {"id": i, "file_name": f"{i}.jpg", "height": 64, "width": 80}  # noqa: E731
    folder = tmp_path / "train"
    for i in range(1, 6):
        write_image(folder / f"{i}.jpg", (64, 80), seed=i)
    (folder / "1.jpg").unlink()
    path = folder / "_annotations.coco.json"
    path.write_text(json.dumps({"images": [im(i) for i in range(1, 6)], "annotations": [], "categories": CATS}))
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(root=str(path), val_split=str(path)), **SIZES)
    assert [p for p in err.value.problems if "missing" in p] == [f"{folder / '1.jpg'}: image file missing ({path}#image 1)"] * 2
    (folder / "2.jpg").rename(tmp_path / "elsewhere.jpg")
    for i in range(3, 6):
        (folder / f"{i}.jpg").unlink()
    with pytest.raises(DataError, match="none of its images was found; looked for the file_name values in"):
        build_datasets(DataConfig(root=str(path), val_split=str(path)), **SIZES)


def test_boxes_over_1_px_outside_are_said_and_sub_pixel_ones_clipped_quietly(coco):
    def change(d):
        d["annotations"][0]["bbox"] = [10, 5, 70.4, 30]  # x + w = 80.4 on an 80 px image: rounding
    _edit(coco, change)
    ds = _build(coco)
    said = [w for w in ds.warnings if "outside" in w]
    assert len(said) == 1 and "annotation 3 [70, 50, 30, 30]" in said[0] and "over 1 px outside the 80x64 image" in said[0]
    assert ds.train[0][1]["boxes"][0].tolist() == [10, 5, 80, 35]


def test_roboflow_s_unused_category_0_is_left_out_and_a_guessed_val_file_is_explained(tmp_path):
    im = {"id": 1, "file_name": "1.jpg", "height": 64, "width": 80}
    write_image(tmp_path / "train" / "1.jpg", (64, 80))
    path = tmp_path / "train" / "_annotations.coco.json"
    cats = [{"id": 0, "name": "shapes", "supercategory": "none"}, {"id": 1, "name": "cat", "supercategory": "shapes"}]
    data = {"images": [im], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}], "categories": cats}
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="instances_val.json: COCO annotation file not found .* give it with --val-split PATH.json"):
        build_datasets(DataConfig(root=str(path)), **SIZES)
    ds = build_datasets(DataConfig(root=str(path), val_split=str(path)), **SIZES)
    assert ds.class_map.to_dict() == {"cat": 1} and any("category 'shapes' has id 0 and no annotation uses it" in w for w in ds.warnings)


def test_a_used_category_id_0_shifts_the_ids_by_one(tmp_path):
    """Label Studio's and labelme2coco's COCO exports count category ids from 0: "class 'cat' has
    id 0; ids must be integers >= 1" refused the file, with no way out named. The ids + 1 are the
    class ids, read by name (said), and eval's detections.json keeps the file's own ids."""
    ims = [{"id": i, "file_name": f"{i}.jpg", "height": 64, "width": 80} for i in (1, 2)]
    for im in ims:
        write_image(tmp_path / im["file_name"], (64, 80))
    cats = [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [1, 1, 20, 20]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 30, 30]}]
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"images": ims, "annotations": anns, "categories": cats}))
    ds = build_datasets(DataConfig(root=str(path), val_split=str(path)), **SIZES)
    assert ds.class_map.to_dict() == {"cat": 1, "dog": 2} and "category ids + 1" in ds.class_map.source
    assert [ds.train[i][1]["labels"].tolist() for i in (0, 1)] == [[1], [2]]
    assert any("'cat' 0 -> 1, 'dog' 1 -> 2" in w for w in ds.warnings)


def test_the_stated_area_reaches_evaluation_and_training_targets_have_none(coco):
    """pycocotools judges COCO's small/medium/large by the annotation's ``area`` (the mask's on
    COCO), not the box's: eval used the box area, so APs/APm/APl differed from pycocotools on the file."""
    from retinanet.engine.evaluate.coco import coco_ground_truth
    from retinanet.engine.evaluate.loop import _gt_record

    _edit(coco, lambda d: d["annotations"][0].update(area=123.5))  # a mask smaller than its 20 x 30 box
    ds = _build(coco)
    _, target = ds.val[0]
    assert "area" in target
    _, target = ds.train[0]
    assert "area" not in target  # augmentations would leave it beside boxes it no longer fits
    val = build_datasets(DataConfig(root=str(coco), train_split="train2017", val_split="train2017"), **SIZES).val
    _, target = val[0]
    gt = _gt_record(target, tuple(target["size"]))
    assert gt["areas"].tolist() == [123.5, 1200.0]  # as stated (the second states its 30 x 40 box)
    anns = coco_ground_truth([gt], [1, 18])["annotations"]
    assert [a["area"] for a in anns] == [123.5, 1200.0]


def test_a_folder_read_as_coco_says_where_the_format_came_from(tmp_path):
    with pytest.raises(DataError, match="a folder, not a COCO annotation file .*--config coco sets it"):
        build_datasets(DataConfig(root=str(tmp_path), format="coco"), **SIZES)


def _windows_coco(root, names):
    """instances_train.json beside images/train/<i>.jpg, its file_name values ``names`` (one image each)."""
    for i in range(len(names)):
        write_image(root / "images" / "train" / f"{i}.jpg", (64, 80), seed=i)
    images = [{"id": i + 1, "file_name": n, "height": 64, "width": 80} for i, n in enumerate(names)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 20, 20]} for i in range(len(names))]
    path = root / "instances_train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return path


def _read(path):
    from retinanet.data.build import read_records
    return read_records(DataConfig(root=str(path), val_split=str(path)), splits=("train",))


def test_file_names_written_on_windows_are_read_with_one_warning_per_kind(tmp_path):
    """Windows labellers write 'images\\train\\0.jpg' or 'C:\\Users\\me\\...': 'none of its images was found'."""
    path = _windows_coco(tmp_path, ["images\\train\\0.jpg", "images\\train\\1.jpg",
                                    "C:\\Users\\me\\coco\\images\\train\\2.jpg", "\\\\nas\\share\\images\\train\\3.jpg"])
    records, *_, problems, warns = _read(path)
    assert not problems
    assert [r.file for r in records["train"]] == [str(tmp_path / "images" / "train" / f"{i}.jpg") for i in range(4)]
    said = [w for w in warns if "Windows" in w]
    assert said == [
        f"{path}: 2 file_name value(s) are written with Windows '\\' separators: read with them as folder separators "
        f"(e.g. 'images\\train\\0.jpg' -> {tmp_path / 'images/train/0.jpg'})",
        f"{path}: 2 file_name value(s) are absolute Windows paths, which cannot exist here: each was found under the "
        "folder it is relative to by its trailing folder and file names (the longest run that exists; check they are "
        f"the files meant) (e.g. 'C:\\Users\\me\\coco\\images\\train\\2.jpg' -> {tmp_path / 'images/train/2.jpg'})"]


def test_a_windows_file_name_not_found_says_its_windows_form(tmp_path):
    path = _windows_coco(tmp_path, ["images\\train\\0.jpg", "images\\train\\9.jpg", "C:\\data\\8.jpg"])
    (tmp_path / "images" / "train" / "1.jpg").unlink()
    (tmp_path / "images" / "train" / "2.jpg").unlink()
    *_, problems, _ = _read(path)
    assert sorted(problems) == sorted([
        f"{tmp_path / 'images/train/9.jpg'}: image file missing ({path}#image 2); 'images\\train\\9.jpg' is not under "
        f"{tmp_path} as written, nor with its Windows '\\' read as folder separators",
        f"{tmp_path / '8.jpg'}: image file missing ({path}#image 3); 'C:\\data\\8.jpg' is an absolute Windows path, "
        f"which cannot exist here, and no run of its trailing parts (data/8.jpg, ...) is under {tmp_path}"])


def test_none_found_names_the_windows_form(tmp_path):
    path = _windows_coco(tmp_path, ["D:\\x\\0.jpg"])
    (tmp_path / "images" / "train" / "0.jpg").unlink()
    *_, problems, _ = _read(path)
    assert any("none of its images was found" in p and "Windows paths such as 'D:\\x\\0.jpg'" in p for p in problems)


def test_two_windows_paths_read_as_one_file_are_a_problem_not_a_merge(tmp_path):
    """C:\\a\\0.jpg and D:\\b\\0.jpg both found as 0.jpg by base name: each entry's objects would be split."""
    path = _windows_coco(tmp_path, ["C:\\a\\0.jpg", "D:\\b\\0.jpg", "2.jpg"])
    records, *_, problems, _ = _read(path)
    assert [r.image_id for r in records["train"]] == [3]
    assert problems == [f"{path}: 2 images name the same file {tmp_path / 'images/train/0.jpg'} (id 1 'C:\\a\\0.jpg', id 2 "
                        "'D:\\b\\0.jpg'): its objects would be split between them; give each image one entry"]
