"""``torchrun --nproc_per_node=2 -m retinanet train`` on CPU (gloo): trains, evaluates every val
image exactly once (the gathered COCO result equals a single-process evaluation of the saved
weights), and only rank 0 writes files and prints."""

import csv
import json

import pytest
import torch
import yaml

from retinanet.data import make_synthetic
from retinanet.engine.evaluate.coco import METRIC_NAMES


def test_two_cpu_processes_train_and_evaluate(tmp_path, torchrun):
    from retinanet.config import DataConfig
    from retinanet.data import build_datasets, build_loader
    from retinanet.engine.runtime.checkpoint import load_model
    from retinanet.engine.evaluate.loop import evaluate

    make_synthetic(tmp_path / "syn", num_train=8, num_val=5, image_size=64, seed=0)  # 5 val images: shards of 3 and 2
    cfg = tmp_path / "tiny.yaml"  # score_thresh 0: many detections, so a lost or doubled image would change the metrics
    cfg.write_text(yaml.safe_dump({"model": {"score_thresh": 0.0, "fpn_channels": 32, "head_convs": 1}}))
    voc = tmp_path / "syn" / "VOCdevkit" / "VOC2012"
    bad = voc / "JPEGImages" / f"{(voc / 'ImageSets' / 'Main' / 'train.txt').read_text().split()[5]}.jpg"
    bad.write_bytes(b"")  # item 5: in rank 1's shard at seed 0; skipped (--skip-bad), named once in rank 0's train.log
    run = tmp_path / "run"
    proc = torchrun("train", "--config", str(cfg), "--data", str(tmp_path / "syn"), "--arch", "resnet18_fpn",
                    "--from-scratch", "--min-size", "64", "--max-size", "64", "--epochs", "1", "--batch-size", "1",
                    "--lr", "0.01", "--warmup-iters", "2", "--print-every", "2", "--device", "cpu", "--workers", "0",
                    "--skip-bad", "--out", str(run))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    names = {"results.csv", "metrics.json", "results.png", "config.yaml", "classes.json", "train.log", "last.pt", "best.pt"}
    assert {p.name for p in run.iterdir()} == names | {".lock"}  # one set of outputs, no leftovers from another rank
    assert (run / ".lock").read_text() == ""  # rank 0 held the folder, and let it go
    assert torch.load(run / "last.pt", weights_only=True)["world_size"] == 2  # a resume compares it
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert len(rows) == 1 and rows[0]["val_images"] == "5" and float(rows[0]["loss"]) > 0
    # 8 images, 2 processes, 1 image per step: 4 steps each, so 2 progress lines from rank 0 only
    out = proc.stdout
    assert out.count("epoch 1/1 step ") == 2 and out.count("epoch 1/1: loss") == 1 and out.count("training finished") == 1
    assert out.count("rank-0 loss") == 2  # the progress lines' running loss is rank 0's; the epoch line's, every rank's
    assert "2 process(es)" in out
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/1: loss") == 1 and log.count("training finished") == 1
    assert log.count(f"data: skipped while loading: {bad}: cannot decode image") == 1  # from rank 1 too (gathered)
    assert "skipped 1 image(s) that could not be decoded" in log

    model, _ = load_model(run / "last.pt")
    data = build_datasets(DataConfig(root=str(tmp_path / "syn"), workers=0), min_size=64, max_size=64)
    ref = evaluate(model, build_loader(data.val, batch_size=2, workers=0, train=False), device="cpu",
                   class_map=data.class_map, progress=False)
    assert ref.num_images == 5 and ref.metrics["AR100"] > 0
    assert {k: float(rows[0][k]) for k in METRIC_NAMES} == ref.metrics

    # `retinanet eval` under torchrun: shards gathered to the same exact numbers, printed once
    ev = tmp_path / "eval"
    proc = torchrun("eval", "--weights", str(run / "last.pt"), "--data", str(tmp_path / "syn"), "--device", "cpu",
                    "--workers", "0", "--batch-size", "1", "--quiet", "--out", str(ev))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((ev / "eval.json").read_text())
    assert result["num_images"] == 5 and result["metrics"] == ref.metrics
    assert proc.stdout.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all") == 1


def _main_first_worker(rank: int, port: int, fail: bool, results) -> None:
    import torch.distributed as dist

    from retinanet.engine.runtime import distributed as D
    from retinanet.errors import CheckpointError, RetinaNetError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    calls = []

    def fetch():
        calls.append(rank)
        if fail:
            raise CheckpointError("https://example.org/w.pth: cannot download")
        return f"path from rank {rank}"

    try:
        results[rank] = ("ok", D.main_first(fetch, "to fetch the weights"), calls)
    except RetinaNetError as err:
        results[rank] = (type(err).__name__, str(err), calls)
    dist.barrier()  # both ranks still talk: neither failed in a collective
    dist.destroy_process_group()


@pytest.mark.parametrize("fail", [False, True], ids=["fetched", "failed"])
def test_main_first_runs_on_rank_0_first_and_a_failure_there_stops_every_rank_with_a_message(fail, free_port):
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_main_first_worker, args=(free_port(), fail, results), nprocs=2, join=True)
    if not fail:
        assert results[0] == ("ok", "path from rank 0", [0]) and results[1] == ("ok", "path from rank 1", [1])
    else:
        assert results[0] == ("CheckpointError", "https://example.org/w.pth: cannot download", [0])  # as raised
        assert results[1] == ("RetinaNetError", "rank 1: stopped, because the main process (rank 0) failed to fetch "
                              "the weights (CheckpointError, reported by rank 0)", [])  # rank 1 never tried


def test_an_error_of_rank_1_alone_ends_the_run_and_is_in_rank_0s_log(tmp_path, torchrun):
    make_synthetic(tmp_path / "syn", num_train=8, num_val=2, image_size=64, seed=0)
    voc = tmp_path / "syn" / "VOCdevkit" / "VOC2012"
    bad = voc / "JPEGImages" / f"{(voc / 'ImageSets' / 'Main' / 'train.txt').read_text().split()[5]}.jpg"
    bad.write_bytes(b"")  # item 5: in rank 1's shard at seed 0; without --skip-bad rank 1 stops
    run = tmp_path / "run"
    proc = torchrun("train", "--data", str(tmp_path / "syn"), "--arch", "resnet18_fpn", "--from-scratch",
                    "--fpn-channels", "16", "--head-convs", "1", "--min-size", "64", "--max-size", "64", "--epochs", "1",
                    "--batch-size", "1", "--warmup-iters", "0", "--device", "cpu", "--workers", "0", "--out", str(run))
    assert proc.returncode != 0
    log = (run / "train.log").read_text()
    cause = log.index("rank 1: error: a bad image was met while loading data")  # the cause, not only a lost connection
    assert f"{bad}: cannot decode image" in log[cause:] and log.count("cannot decode image") == 1
