"""``evaluate`` and ``retinanet eval`` end to end: tiny model, synthetic data, CPU."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from retinanet.cli import main

MIN_SIZE, MAX_SIZE = 64, 96


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from retinanet.data import make_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic(root, num_train=2, num_val=4, image_size=128, seed=0)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synthetic):
    """An untrained resnet18 model over the synthetic classes, and its checkpoint file."""
    from retinanet.config import DataConfig
    from retinanet.data import build_datasets
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    from retinanet.model import build_model

    class_map = build_datasets(DataConfig(root=str(synthetic)), min_size=MIN_SIZE, max_size=MAX_SIZE).class_map.to_dict()
    torch.manual_seed(0)
    model = build_model("resnet18_fpn", num_classes=max(class_map.values()) + 1, min_size=MIN_SIZE, max_size=MAX_SIZE,
                        norm="bn", score_thresh=0.0).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "config": {"model": asdict(model.config)}, "class_map": class_map}, path)
    return model, path


def test_evaluate_rescales_to_original_size(synthetic, tiny):
    """Detections equal the model's own output on the original-size image (its own resize)."""
    from PIL import Image

    from retinanet.config import DataConfig
    from retinanet.data import build_datasets, build_loader
    from retinanet.engine.evaluate.loop import evaluate

    model, _ = tiny
    ds = build_datasets(DataConfig(root=str(synthetic)), min_size=MIN_SIZE, max_size=MAX_SIZE)
    loader = build_loader(ds.val, batch_size=2, workers=0, train=False, distributed=False, seed=0, aspect_grouping=False)
    result = evaluate(model, loader, device="cpu", class_map=ds.class_map, progress=False, voc=True)
    assert result.num_images == len(ds.val)
    assert set(result.metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
    assert [r["id"] for r in result.per_class] == sorted(ds.class_map.to_dict().values())
    assert result.voc is not None and len(result.voc["per_class"]) == len(result.per_class)

    _, target = ds.val[0]
    assert tuple(target["orig_size"]) != tuple(target["size"])  # the case really rescales
    image = torch.from_numpy(np.asarray(Image.open(target["file"]).convert("RGB")).copy()).permute(2, 0, 1)
    with torch.inference_mode():
        ref = model([image])[0]
    mine = [d for d in result.detections if d["image_id"] == int(target["image_id"])]
    assert len(mine) > 0 and abs(len(mine) - len(ref["scores"])) <= 0.05 * len(ref["scores"])
    ref_xywh = torch.cat([ref["boxes"][:, :2], ref["boxes"][:, 2:] - ref["boxes"][:, :2]], dim=1).numpy()
    # an untrained model's scores nearly tie, so compare as sets, not in rank order
    n = min(len(mine), len(ref["scores"]))
    np.testing.assert_allclose(np.sort([d["score"] for d in mine])[::-1][:n], np.sort(ref["scores"].numpy())[::-1][:n], atol=1e-3)
    boxes = np.array([d["bbox"] for d in mine])  # [K, 4]
    nearest = np.abs(boxes[:, None, :] - ref_xywh[None, :, :]).max(axis=2).min(axis=1)  # [K]
    assert np.median(nearest) < 0.05 and np.quantile(nearest, 0.9) < 1.0  # a few may swap at the top-k cut
    # the same boxes left in the resized frame would be far off (the frames differ by 2x)
    scale = np.array(target["orig_size"], dtype=float) / np.array(target["size"], dtype=float)
    assert np.abs(scale - 1).max() > 0.4


class GroundTruthModel(torch.nn.Module):
    """A stand-in detector that answers each image with its ground truth (score 0.5); with
    ``false_positives`` every real object also gets a 1-px box of its class scored 1.0 (IoU with
    any object < 0.5), ranked above all the true detections."""

    def __init__(self, dataset, false_positives: bool = False):
        super().__init__()
        self.truth = {img.numpy().tobytes(): target for img, target in (dataset[i] for i in range(len(dataset)))}
        self.false_positives = false_positives

    def forward(self, images):
        out = []
        for img in images:
            t = self.truth[img.numpy().tobytes()]
            boxes, labels = t["boxes"], t["labels"]  # the frame of the image given
            scores = torch.full((len(labels),), 0.5)
            if self.false_positives:
                real = labels[~t["ignore"]]
                boxes = torch.cat([boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(len(real), 4)])
                labels, scores = torch.cat([labels, real]), torch.cat([scores, torch.ones(len(real))])
            out.append({"boxes": boxes, "scores": scores, "labels": labels})
        return out


@pytest.mark.parametrize("false_positives, expected", [(False, 1.0), (True, 0.5)])
def test_evaluate_known_answers(synthetic, false_positives, expected):
    """Ground truth as detections: AP 1.0. Each class's N true detections ranked below N false
    ones: precision is k / (N + k) at recall k / N, whose envelope is 0.5 at every recall, so
    every AP (COCO at each IoU, VOC 11-point and all-point) is 0.5 and recall is still 1."""
    from retinanet.config import DataConfig
    from retinanet.data import build_datasets, build_loader
    from retinanet.engine.evaluate.loop import evaluate

    ds = build_datasets(DataConfig(root=str(synthetic)), min_size=MIN_SIZE, max_size=MAX_SIZE, splits=("val",))
    loader = build_loader(ds.val, batch_size=2, workers=0, train=False, distributed=False, seed=0, aspect_grouping=False)
    model = GroundTruthModel(ds.val, false_positives)
    result = evaluate(model, loader, device="cpu", class_map=ds.class_map, progress=False, voc=True)
    assert result.num_images == len(ds.val) == 4
    for name in ("AP", "AP50", "AP75"):
        assert result.metrics[name] == pytest.approx(expected, abs=1e-9), name
    assert result.metrics["AR100"] == pytest.approx(1.0)
    with_objects = [r for r in result.per_class if r["AP"] >= 0]
    assert with_objects and all(r["AP"] == pytest.approx(expected, abs=1e-9) for r in with_objects)
    assert result.voc["mAP"] == pytest.approx(expected) and result.voc["mAP_07"] == pytest.approx(expected)
    num_objects = sum(len(ds.val[i][1]["labels"]) for i in range(len(ds.val)))
    assert len(result.detections) == num_objects * (2 if false_positives else 1)


@pytest.mark.parametrize("tiled", [False, True])
def test_an_evaluation_cut_short_leaves_nothing_for_the_next_one_on_kept_workers(synthetic, monkeypatch, tiled):
    """A training run evaluates each epoch on one val loader whose workers live across
    evaluations; one cut short by a stop signal (``EvaluationCut``) leaves batches under way in
    them. The next evaluation (whole images, and tiled as a --crop run's) still scores each image
    exactly once, with the numbers of a loader that never ran."""
    from retinanet.config import DataConfig
    from retinanet.data import build_datasets, build_loader
    from retinanet.engine.evaluate import loop as E
    from retinanet.model import build_model
    from retinanet.model.tiling import TileOptions

    ds = build_datasets(DataConfig(root=str(synthetic)), min_size=MIN_SIZE, max_size=MIN_SIZE, splits=("val",),
                        resize_val=not tiled)
    torch.manual_seed(0)  # a small untrained model, its threshold keeping a few of its boxes (most score 0.010)
    model = build_model("resnet18_fpn", num_classes=5, min_size=MIN_SIZE, max_size=MIN_SIZE, norm="bn", fpn_channels=16,
                        head_convs=1, score_thresh=0.0101).eval()
    tile = TileOptions(tile=96).resolved(MIN_SIZE) if tiled else None  # 4 tiles of a 128 px image
    scored = []
    real = E._gt_record
    monkeypatch.setattr(E, "_gt_record", lambda target, hw: scored.append(int(target["image_id"])) or real(target, hw))
    run = lambda loader, stop=None: E.evaluate(model, loader, device="cpu", class_map=ds.class_map, amp="off",  # noqa: E731
                                               progress=False, tile=tile, stop=stop)
    fresh = run(build_loader(ds.val, batch_size=1, workers=0, train=False))
    kept = build_loader(ds.val, batch_size=1, workers=2, train=False, keep_workers=True)
    try:
        scored.clear()
        with pytest.raises(E.EvaluationCut):
            run(kept, stop=lambda: len(scored) >= 1)
        assert len(scored) == 1
        scored.clear()
        again = run(kept)
    finally:
        kept.close()
    assert sorted(scored) == sorted(int(r.image_id) for r in ds.val.records) and len(scored) == 4
    assert again.metrics == fresh.metrics and again.detections == fresh.detections and len(fresh.detections) > 0


def test_eval_cli_writes_outputs(tmp_path, synthetic, tiny, capsys):
    _, ckpt = tiny
    out = tmp_path / "eval"
    code = main(["eval", "--weights", str(ckpt), "--data", str(synthetic), "--out", str(out), "--voc",
                 "--workers", "0", "--device", "cpu", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ")
    assert sum(line.startswith(" Average ") for line in lines) == 12
    assert "VOC AP50" in printed and str(out) in printed
    data = json.loads((out / "eval.json").read_text())
    assert data["summary_text"] in printed
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == data["num_detections"]
    assert (out / "pr_curves.png").stat().st_size > 1000


def test_eval_classes_defaults_to_the_checkpoint_s_and_a_differing_one_names_the_way_out(tmp_path, synthetic, tiny,
                                                                                        capsys):
    """``eval --help`` said ``--classes`` defaults to "discovered from the annotations" (train's
    words), while eval reads the dataset with the checkpoint's class map; a ``--classes`` with the
    model's names at other ids was called "meaningless" with a COCO-on-VOC example, not the way out."""
    _, ckpt = tiny
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: the checkpoint's, so the dataset's ids are the model's;" in help_text
    names = json.loads((synthetic / "classes.json").read_text())
    swapped = dict(zip(sorted(names, key=names.get), sorted(names.values(), reverse=True)))
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    assert main(["eval", "--weights", str(ckpt), "--data", str(synthetic), "--out", str(tmp_path / "e"), "--classes",
                 str(tmp_path / "swapped.json"), "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "classes with different ids in model and dataset" in err
    assert "without --classes the dataset is read with the checkpoint's class map" in err


def test_eval_says_what_each_cap_cut_and_takes_topk_candidates(tmp_path, synthetic, tiny, capsys):
    """eval counted the images at --max-dets but not what the cut scored, and said nothing of images far
    below it whose candidates an FPN level's top-k (1000) cut before NMS; --topk-candidates did not exist."""
    _, ckpt = tiny
    args = ["eval", "--weights", str(ckpt), "--data", str(synthetic), "--workers", "0", "--device", "cpu", "--quiet",
            "--score-thresh", "0.005"]  # an untrained model: most scores near its 0.01 prior, far more than 1000 per level

    def run(name, *more):
        assert main([*args, "--out", str(tmp_path / name), *more]) == 0
        return json.loads((tmp_path / name / "eval.json").read_text()), capsys.readouterr().out

    cut, printed = run("cut")
    assert (cut["max_dets"], cut["at_max_dets"], cut["at_max_dets_score"], cut["topk_candidates"]) == (300, 0, 0.0, 1000)
    assert cut["at_topk_candidates"] == 4 and cut["at_topk_candidates_score"] > 0.005
    assert ("warning: 4 image(s) stayed below --max-dets 300 while an FPN level had more candidates above the score "
            "threshold than the 1000 it keeps for NMS (topk_candidates): those left out scored at most "
            f"{cut['at_topk_candidates_score']:.3g}; give a larger --topk-candidates to keep them") in printed
    more, printed = run("more", "--topk-candidates", "100000")
    assert (more["topk_candidates"], more["at_topk_candidates"]) == (100000, 0) and "warning" not in printed
    assert more["num_detections"] > cut["num_detections"]
    capped, printed = run("capped", "--max-dets", "5")
    assert (capped["at_max_dets"], capped["at_topk_candidates"]) == (4, 0) and capped["at_max_dets_score"] > 0.005
    assert (f"warning: 4 image(s) reached --max-dets 5: detections beyond it were cut (scoring at most "
            f"{capped['at_max_dets_score']:.3g}; COCO scores") in printed


def test_eval_progress_in_a_log_file_is_plain_lines(tmp_path, synthetic, tiny, capsys, monkeypatch):
    """``retinanet eval ... 2> eval.log``: stderr is not a terminal, so progress is a line now and
    then and at the end, never tqdm's carriage returns (one endless line in the log)."""
    from retinanet.data import progress as P

    monkeypatch.setattr(P, "DELAY_S", 0.0)  # the tiny eval is shorter than the usual 2 s of silence
    _, ckpt = tiny
    assert main(["eval", "--weights", str(ckpt), "--data", str(synthetic), "--out", str(tmp_path / "e"),
                 "--workers", "0", "--device", "cpu", "--batch-size", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("eval: ")]
    assert lines and lines[-1].startswith("eval: 4/4 batches (100%), "), err


def test_ground_truth_is_scored_as_read_not_after_a_round_trip_through_the_resized_frame():
    """A 32 x 32 box of a 96 px image evaluated at 160 px came back with area 1024.00003: out of
    COCO's "small" range, which pycocotools on the file keeps it in."""
    from retinanet.data.transforms import ItemTransform
    from retinanet.engine.evaluate.loop import _gt_record

    box = torch.tensor([[46.0, 15.0, 78.0, 47.0]])
    image, target = ItemTransform(160, 160, train=False)(torch.zeros(3, 96, 96, dtype=torch.uint8), {
        "boxes": box, "labels": torch.tensor([1]), "image_id": 0, "orig_size": (96, 96)})
    assert target["size"] == (160, 160) and not torch.equal(target["boxes"], box)
    gt = _gt_record(target, (160, 160))
    (x1, y1, x2, y2), = gt["boxes"].tolist()
    assert [x1, y1, x2, y2] == [46.0, 15.0, 78.0, 47.0] and (x2 - x1) * (y2 - y1) == 1024.0
