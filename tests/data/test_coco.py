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
    assert t["image_id"] == 1 and t["labels"].tolist() == [18] and t["boxes"].tolist() == [[10, 5, 30, 35]]  # crowd left out
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
    assert "image 2: category id(s) not in the class map: [99]" in text and "refer to image id 42" in text and "gone.jpg: image file missing" in text
    assert str(coco) in text


def test_missing_or_broken_json(tmp_path):
    with pytest.raises(DataError, match="instances_train2017.json: dataset not found"):
        build_datasets(DataConfig(root=str(tmp_path / "instances_train2017.json"), format="coco"), **SIZES)
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="x.json: not a COCO instances file"):
        build_datasets(DataConfig(root=str(tmp_path / "x.json")), **SIZES)
