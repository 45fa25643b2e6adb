"""A run whose folder's disk cannot hold its checkpoints is refused before it trains (tiny resnet18,
64 px): the estimate of a checkpoint's size, the refusal, and what an existing run's files count."""

import collections
import dataclasses
from pathlib import Path

import pytest

from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.data import make_synthetic
from retinanet.engine.runtime.checkpoint import checkpoint_bytes
from retinanet.engine.train.loop import train
from retinanet.model import build_model
import retinanet.files as files

Usage = collections.namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=2, num_val=1, image_size=64, seed=0)
    return str(root / "VOCdevkit")


def _model(**options):
    return ModelConfig(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1, **options)


def _train_cfg(out, **options):
    return TrainConfig(out=str(out), epochs=1, batch_size=2, warmup_iters=1, print_every=100, device="cpu",
                       weights="none", **options)


@pytest.mark.parametrize("optimizer,ema,layers", [("sgd", False, 5), ("adamw", True, 5), ("sgd", False, 2)])
def test_the_estimate_is_the_size_of_the_checkpoint_written(data_root, tmp_path, optimizer, ema, layers):
    """Optimizer buffers per trainable parameter (frozen stages have none) and the EMA's copy."""
    m = _model(trainable_backbone_layers=layers)
    weights = "none"
    if layers < 5:  # a partly frozen body from scratch is refused (stages that never learn): start from a checkpoint
        train(_model(), DataConfig(root=data_root, workers=0), _train_cfg(tmp_path / "first"), progress=False)
        weights = str(tmp_path / "first" / "last.pt")
    cfg = dataclasses.replace(_train_cfg(tmp_path / "run", optimizer=optimizer, ema=ema), weights=weights)
    train(m, DataConfig(root=data_root, workers=0), cfg, progress=False)
    written = (tmp_path / "run" / "last.pt").stat().st_size
    estimate = checkpoint_bytes(build_model(**dataclasses.asdict(dataclasses.replace(m, num_classes=5))), optimizer, 0.9, ema)
    assert written <= estimate <= written + 1_000_000, (estimate, written)


def test_a_disk_too_full_for_the_checkpoints_is_refused_before_training(data_root, tmp_path, monkeypatch, run_cli):
    run = tmp_path / "runs" / "r"
    argv = ["train", "--data", data_root, "--out", str(run), "--arch", "resnet18_fpn", "--from-scratch", "--min-size", "64",
            "--max-size", "64", "--fpn-channels", "32", "--head-convs", "1", "--epochs", "1", "--batch-size", "2",
            "--workers", "0", "--device", "cpu"]
    model = build_model("resnet18_fpn", num_classes=5, norm="bn", trainable_backbone_layers=5, fpn_channels=32, head_convs=1)
    size = checkpoint_bytes(model, "sgd", 0.9, False)  # what --from-scratch trains
    free = [3 * size - 1]  # one byte short of last.pt + best.pt + the temporary
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: Usage(10**12, 0, free[0]))
    status, err = run_cli(argv)
    assert status == 2, err
    assert f"--out {run}: its disk has {files.megabytes(free[0])} free, and this run's checkpoints (last.pt and best.pt" in err
    assert f"need about {files.megabytes(3 * size)}: free some space or give another --out" in err
    assert "Traceback" not in err
    assert not run.exists() and not run.parent.exists()  # refused before anything was written

    free[0] = 3 * size
    status, err = run_cli(argv)
    assert status == 0, err
    # the next run into that folder replaces last.pt and best.pt: it needs the temporary only
    free[0] = size
    status, err = run_cli([*argv, "--exist-ok"])
    assert status == 0, err
    free[0] = size - 1
    status, err = run_cli([*argv, "--exist-ok"])
    assert status == 2 and "(the replaced last.pt and best.pt of about" in err, err


def test_a_file_system_that_reports_no_size_is_not_judged(tmp_path, monkeypatch):
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: Usage(0, 0, 0))  # some FUSE / network mounts
    files.check_free_space(tmp_path / "new" / "run", 10**9, "checkpoints")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 5, 5))
    with pytest.raises(files.RetinaNetError, match=r"--out .*run: its disk has 0 MB free, and checkpoints need about 1.0 GB"):
        files.check_free_space(tmp_path / "new" / "run", 10**9, "checkpoints")


def test_best_pt_is_the_last_pt_just_written_and_keeps_it_when_last_pt_moves_on(data_root, tmp_path):
    run = tmp_path / "run"
    summary = train(_model(), DataConfig(root=data_root, workers=0), _train_cfg(run), progress=False)
    assert summary["best_epoch"] == 1
    assert (run / "best.pt").samefile(run / "last.pt")  # one file on disk, written once
    before = (run / "best.pt").read_bytes()
    files.write_atomic(run / "last.pt", b"the next epoch's checkpoint")  # how every write of ours happens
    assert (run / "best.pt").read_bytes() == before and not (run / "best.pt").samefile(run / "last.pt")


def test_link_atomic_replaces_in_one_step_and_copies_where_there_are_no_hard_links(tmp_path, monkeypatch):
    files.write_atomic(tmp_path / "last.pt", b"epoch 1")
    files.write_atomic(tmp_path / "best.pt", b"epoch 0")
    files.link_atomic(tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "best.pt").samefile(tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary left

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")  # FAT, some network mounts

    monkeypatch.setattr(files.os, "link", no_links)
    files.write_atomic(tmp_path / "last.pt", b"epoch 2")
    files.link_atomic(tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == b"epoch 2" and not (tmp_path / "best.pt").samefile(tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_a_link_stopped_midway_leaves_best_pt_and_no_temporary_and_its_name_is_one_the_next_run_clears(tmp_path, monkeypatch):
    files.write_atomic(tmp_path / "last.pt", b"epoch 2")
    files.write_atomic(tmp_path / "best.pt", b"epoch 1")
    made, real_link = [], files.os.link
    monkeypatch.setattr(files.os, "link", lambda src, dst: made.append(Path(dst).name) or real_link(src, dst))

    def ctrl_c(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        files.link_atomic(tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == b"epoch 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    # a SIGKILL there would leave the temporary: write_atomic's naming, which the next run in the folder removes
    assert len(made) == 1 and files.TEMPORARY.match(made[0])["name"] == "best.pt"
