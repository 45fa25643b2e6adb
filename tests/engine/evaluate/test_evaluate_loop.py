"""``evaluate`` without the real model: an oracle that knows each image's boxes, DDP gathering."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from retinanet.engine.evaluate import loop as evaluate_mod
from retinanet.engine.evaluate.loop import compute_metrics, evaluate, write_eval_outputs

CLASS_MAP = {"cat": 1, "dog": 2}


def make_items(n: int = 6):
    """Dataset items as the data package gives them: resized image, boxes in the resized frame.

    Each image has its own resized size, so the oracle can recognise it; the original size is a
    different shape (non-uniform scale per axis), so a wrong rescaling changes the boxes.
    """
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        h, w = 40 + 2 * i, 64 + 2 * i
        orig = (int(h * 2.5), int(w * 1.5))
        k = 1 + i % 3
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w / 2, h / 2])
        boxes = torch.cat([xy, xy + torch.tensor([w / 3, h / 3])], dim=1)
        labels = torch.tensor([1 + j % 2 for j in range(k)])
        ignore = torch.zeros(k, dtype=torch.bool)
        if i == 2:
            ignore[0] = True
        target = {"boxes": boxes, "labels": labels, "ignore": ignore, "image_id": 10 + i, "orig_size": orig,
                  "size": (h, w), "file": f"img{i}.jpg"}
        items.append((torch.zeros(3, h, w, dtype=torch.uint8), target))
    return items


class Oracle(torch.nn.Module):
    """Returns the ground truth of each image (found by its size) with decreasing scores, plus
    one false positive per image; a no-op parameter so ``.train()/.eval()`` behave as a model."""

    def __init__(self, items):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.by_size = {tuple(img.shape[-2:]): t for img, t in items}

    def forward(self, images):
        assert not self.training
        out = []
        for img in images:
            t = self.by_size[tuple(img.shape[-2:])]
            fp = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
            boxes = torch.cat([t["boxes"], fp])
            scores = torch.linspace(0.9, 0.5, len(boxes))
            out.append({"boxes": boxes, "scores": scores, "labels": torch.cat([t["labels"], torch.tensor([1])])})
        return out


def loader_of(items, batch_size=2):
    return torch.utils.data.DataLoader(items, batch_size=batch_size, collate_fn=lambda b: tuple(zip(*b)))


def test_evaluate_maps_boxes_to_original_size():
    items = make_items()
    model = Oracle(items).train()
    result = evaluate(model, loader_of(items), device="cpu", class_map=CLASS_MAP, progress=False, voc=True)
    assert model.training  # mode restored
    assert result.num_images == len(items)
    assert [r["class"] for r in result.per_class] == ["cat", "dog"]
    # every ground truth is found (recall 1); the false positives rank last, so AP stays 1
    assert result.metrics["AR100"] == pytest.approx(1.0)
    assert result.metrics["AP"] == pytest.approx(1.0)
    assert result.voc["mAP"] == pytest.approx(1.0)
    # detections are in original pixels: the first one of image 10 is its first box scaled back
    img, t = items[0]
    (h, w), (h0, w0) = t["size"], t["orig_size"]
    first = next(d for d in result.detections if d["image_id"] == 10)
    x1, y1, x2, y2 = (t["boxes"][0].double() * torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h], dtype=torch.float64)).tolist()
    assert first["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])


def test_wrong_scale_would_be_caught():
    """The same detections left in the resized frame do not match the original-size ground truth."""
    items = make_items()
    result = evaluate(Oracle(items), loader_of(items), device="cpu", class_map=CLASS_MAP, progress=False)
    gt = [{"image_id": t["image_id"], "boxes": t["boxes"].numpy() * np.array([1.5, 2.5, 1.5, 2.5]),
           "labels": t["labels"].numpy(), "ignore": t["ignore"].numpy()} for _, t in items]
    unscaled = [{"image_id": t["image_id"], "boxes": t["boxes"].numpy(), "scores": np.ones(len(t["labels"])),
                 "labels": t["labels"].numpy()} for _, t in items]
    assert compute_metrics(gt, unscaled, CLASS_MAP).metrics["AP"] < 0.5 < result.metrics["AP"]


def test_gather_dedupes_padded_ranks(monkeypatch):
    items = make_items()
    single = evaluate(Oracle(items), loader_of(items), device="cpu", class_map=CLASS_MAP, progress=False)
    # two ranks: rank 1 holds the last images plus a padding repeat of the first one
    monkeypatch.setattr(evaluate_mod, "all_gather_object", lambda recs: [recs[:4], recs[4:] + recs[:1]])
    gathered = evaluate(Oracle(items), loader_of(items), device="cpu", class_map=CLASS_MAP, progress=False)
    assert gathered.metrics == single.metrics and gathered.num_images == single.num_images


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        items = make_items(7)  # 7 images over 2 ranks: the sampler pads one
        sampler = torch.utils.data.distributed.DistributedSampler(items, shuffle=False)
        loader = torch.utils.data.DataLoader(items, batch_size=2, sampler=sampler, collate_fn=lambda b: tuple(zip(*b)))
        result = evaluate(Oracle(items), loader, device="cpu", class_map=CLASS_MAP, progress=False, voc=True)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            f.write(result.to_json(include_detections=True))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ddp_two_ranks_equal_single_process(tmp_path):
    import torch.multiprocessing as mp

    # fork: cheap, and the workers inherit this test module (Linux only, as the project)
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    items = make_items(7)
    single = json.loads(evaluate(Oracle(items), loader_of(items), device="cpu", class_map=CLASS_MAP,
                                 progress=False, voc=True).to_json(include_detections=True))
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == single


def test_write_eval_outputs(tmp_path):
    items = make_items()
    result = evaluate(Oracle(items), loader_of(items), device="cpu", class_map=CLASS_MAP, progress=False, voc=True)
    paths = write_eval_outputs(result, tmp_path / "ev")
    data = json.loads(paths["eval"].read_text())
    assert data["metrics"] == result.metrics and data["voc"]["mAP"] == result.voc["mAP"]
    assert len(data["summary_text"].splitlines()) == 12
    assert paths["detections"].read_text() == json.dumps(list(result.detections)) + "\n"
    dets = json.loads(paths["detections"].read_text())
    assert len(dets) == data["num_detections"] == len(result.detections)
    assert set(dets[0]) == {"image_id", "category_id", "bbox", "score"}
    assert paths["pr_curves"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # re-evaluating the written detections gives the same numbers (nothing rounded away)
    gt = [{"image_id": t["image_id"], "labels": t["labels"], "ignore": t["ignore"],
           "boxes": t["boxes"].double() * torch.tensor([1.5, 2.5, 1.5, 2.5], dtype=torch.float64)} for _, t in items]
    for g, (_, t) in zip(gt, items):  # exact scale of each item
        (h, w), (h0, w0) = t["size"], t["orig_size"]
        g["boxes"] = t["boxes"].double() * torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h], dtype=torch.float64)
    redo = [{"image_id": d["image_id"], "boxes": [[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],
             d["bbox"][1] + d["bbox"][3]]], "scores": [d["score"]], "labels": [d["category_id"]]} for d in dets]
    assert compute_metrics(gt, redo, CLASS_MAP).metrics == pytest.approx(result.metrics, abs=1e-12)


def test_detections_json_carries_the_dataset_s_category_ids_and_eval_json_the_files(tmp_path):
    """A COCO file read by name into a checkpoint's class map (ids 7, 3 -> 1, 2): detections.json
    held the class ids, and scored against the file gave AP 0.001 instead of 0.068."""
    from types import SimpleNamespace

    from retinanet.data import ClassMap
    from retinanet.engine.evaluate.loop import dataset_category_ids

    gt = [{"image_id": 5, "boxes": np.array([[0.0, 0, 10, 10]]), "labels": np.array([1]), "height": 20, "width": 20}]
    dets = [{"image_id": 5, "boxes": np.array([[0.0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([1])}]
    result = compute_metrics(gt, dets, {"cat": 1, "dog": 2})
    paths = write_eval_outputs(result, tmp_path / "ev", category_ids={1: 7, 2: 3}, image_files={5: "a.jpg"})
    assert [d["category_id"] for d in json.loads(paths["detections"].read_text())] == [7]
    info = json.loads(paths["eval"].read_text())
    assert info["image_files"] == {"5": "a.jpg"} and "1 -> 7, 2 -> 3" in info["detections_category_ids"]
    coco = tmp_path / "instances_val.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}))
    data = SimpleNamespace(format="coco", root=coco, class_map=ClassMap({"cat": 1, "dog": 2}))
    from retinanet.config import DataConfig

    assert dataset_category_ids(DataConfig(root=str(coco)), data) == {1: 7, 2: 3}
    data.class_map = ClassMap({"cat": 7, "dog": 3})
    assert dataset_category_ids(DataConfig(root=str(coco)), data) is None  # the file's own ids: nothing to map


def test_metrics_make_no_result_dicts_for_a_training_epoch(monkeypatch):
    """The COCO results list was built twice per evaluation (for COCOeval and for
    ``EvalResult.detections``), also after every training epoch, which never reads it: the
    detections are now columns, turned into dicts only when read (``retinanet eval`` writing them)."""
    from retinanet.engine.evaluate.coco import CocoResults, coco_results

    gt = [{"image_id": 1, "boxes": np.array([[0.0, 0, 10, 10], [5, 5, 20, 20]]), "labels": np.array([1, 2]), "height": 30, "width": 30}]
    dets = [{"image_id": 1, "boxes": np.array([[0.0, 0, 10, 10], [5, 5, 20, 20]]), "scores": np.array([0.9, 0.4]),
             "labels": np.array([1, 2])}]
    listed = coco_results(dets)

    def refuse(*_):
        raise AssertionError("result dicts made")
    monkeypatch.setattr(CocoResults, "to_list", refuse)
    result = compute_metrics(gt, dets, CLASS_MAP)
    assert result.metrics["AP"] == pytest.approx(1.0) and len(result.detections) == 2
    monkeypatch.undo()
    assert list(result.detections) == listed
    given = evaluate_mod.EvalResult(result.metrics, result.per_class, result.summary_text, detections=listed)
    assert isinstance(given.detections, CocoResults) and given.detections == listed  # a list given: turned into columns
