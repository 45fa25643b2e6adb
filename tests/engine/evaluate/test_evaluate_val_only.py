"""``retinanet eval`` reads only the split it evaluates: no training split needed (VOC and COCO)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from retinanet.cli import main
from retinanet.config import DataConfig
from retinanet.data import build_datasets, make_synthetic
from retinanet.errors import DataError

SIZE = 64


@pytest.fixture(scope="module")
def val_only(tmp_path_factory):
    """A synthetic VOC dataset whose train split file (and train images) are gone, and a tiny checkpoint."""
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    from retinanet.model import build_model

    root = tmp_path_factory.mktemp("valonly") / "data"
    make_synthetic(root, num_train=2, num_val=3, image_size=SIZE, seed=0)
    year = root / "VOCdevkit" / "VOC2012"
    for stem in (year / "ImageSets" / "Main" / "train.txt").read_text().split():
        (year / "JPEGImages" / f"{stem}.jpg").unlink()
    (year / "ImageSets" / "Main" / "train.txt").unlink()
    class_map = json.loads((root / "classes.json").read_text())
    torch.manual_seed(0)
    model = build_model("resnet18_fpn", num_classes=max(class_map.values()) + 1, min_size=SIZE, max_size=SIZE, norm="bn",
                        fpn_channels=32, head_convs=1)
    ckpt = root.parent / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "config": {"model": asdict(model.config)}, "class_map": class_map}, ckpt)
    return root, ckpt


def _eval(args, out):
    return main(["eval", *args, "--out", str(out), "--workers", "0", "--device", "cpu", "--quiet"])


def test_voc_without_train_split(val_only, tmp_path, capsys):
    root, ckpt = val_only
    with pytest.raises(DataError, match="split 'train': no split file found"):  # training still needs it
        build_datasets(DataConfig(root=str(root)), min_size=SIZE, max_size=SIZE)
    val = build_datasets(DataConfig(root=str(root)), min_size=SIZE, max_size=SIZE, splits=("val",))
    assert len(val.train) == 0 and len(val.val) == 3
    assert _eval(["--weights", str(ckpt), "--data", str(root)], tmp_path / "eval") == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["num_images"] == 3
    assert "3 images" in capsys.readouterr().out


def test_empty_val_split_is_one_clear_error(val_only, tmp_path, capsys):
    root, ckpt = val_only
    main_dir = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    (main_dir / "empty.txt").write_text("")
    assert _eval(["--weights", str(ckpt), "--data", str(root), "--split", "empty"], tmp_path / "e") == 2
    err = capsys.readouterr().err
    assert "empty.txt: split file is empty" in err and "Traceback" not in err


def test_coco_val_json_alone(val_only, tmp_path):
    """``--data instances_val2017.json`` (no train JSON anywhere) evaluates that file."""
    root, ckpt = val_only
    ds = build_datasets(DataConfig(root=str(root)), min_size=SIZE, max_size=SIZE, splits=("val",))
    names = {i: n for n, i in ds.class_map.to_dict().items()}
    images, anns = [], []
    for k, rec in enumerate(ds.val.records, start=1):
        images.append({"id": k, "file_name": Path(rec.file).name, "height": SIZE, "width": SIZE})
        for (x1, y1, x2, y2), label in zip(rec.boxes.tolist(), rec.labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    coco.parent.mkdir(parents=True)
    (tmp_path / "coco" / "val2017").symlink_to(root / "VOCdevkit" / "VOC2012" / "JPEGImages")
    coco.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": i, "name": n} for i, n in sorted(names.items())]}))
    assert _eval(["--weights", str(ckpt), "--data", str(coco)], tmp_path / "eval") == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["num_images"] == 3


def test_without_data_the_checkpoints_own_dataset_is_evaluated_and_said(val_only, tmp_path, capsys):
    """Not the embedded synthetic set (the old default: a VOC model scored on shapes): the dataset
    and split settings the run was trained with; a dataset moved away and a file that records no
    dataset are one line each."""
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    root, ckpt = val_only
    stored = torch.load(ckpt, weights_only=True)
    trained = tmp_path / "trained.pt"
    stored["config"]["data"] = asdict(DataConfig(root=str(root), val_split="val", workers=0))
    save_checkpoint(stored, trained)
    assert main(["eval", "--weights", str(trained), "--out", str(tmp_path / "e1"), "--workers", "0", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "e1" / "eval.json").read_text())["num_images"] == 3
    assert f"no --data: evaluating on the dataset trained.pt was trained on, {root}, split 'val'" in capsys.readouterr().err
    stored["config"]["data"]["root"] = str(tmp_path / "moved")
    save_checkpoint(stored, trained)
    assert _eval(["--weights", str(trained)], tmp_path / "e2") == 2
    assert f"was trained on {tmp_path / 'moved'}, which is not there now: give --data" in capsys.readouterr().err
    assert _eval(["--weights", str(ckpt)], tmp_path / "e3") == 2  # no data config stored (as a torchvision file)
    assert "--data is needed" in capsys.readouterr().err


def test_without_data_an_option_given_equal_to_its_default_is_still_given(val_only, tmp_path, capsys):
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    root, ckpt = val_only
    stored = torch.load(ckpt, weights_only=True)
    stored["config"]["data"] = asdict(DataConfig(root=str(root), val_split="train"))  # trained with --val-split train
    trained = tmp_path / "trained.pt"
    save_checkpoint(stored, trained)
    assert main(["eval", "--weights", str(trained), "--split", "val", "--out", str(tmp_path / "e"), "--workers", "0",
                 "--device", "cpu"]) == 0
    assert "split 'val'" in capsys.readouterr().err
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["num_images"] == 3
