"""Run safety: a new run never overwrites another (``--exist-ok`` opts in), ``--out`` is checked
before any work, export without ``onnx`` names the extra, outputs are written atomically with the
mode the umask gives (tiny resnet18, 64 px, one step per epoch)."""

import contextlib
import dataclasses
import errno
import os
import sys

import pytest
import torch

from retinanet.config import DataConfig, ModelConfig, TrainConfig, write_config_file
from retinanet.data import ClassMap, make_synthetic
from retinanet.engine.export.onnx_export import export_onnx, verify_onnx
from retinanet.engine.infer.predict import write_predictions_json
from retinanet.engine.runtime.checkpoint import save_checkpoint
from retinanet.engine.train.loop import train
from retinanet.errors import RetinaNetError
from retinanet.files import check_output_path, write_atomic
from retinanet.model import build_model

OUTPUTS = ("best.pt", "last.pt", "results.csv", "metrics.json", "results.png", "config.yaml", "classes.json", "train.log")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=2, num_val=1, image_size=64, seed=0)
    return str(root / "VOCdevkit")


def _cfgs(root, out, **options):
    model = ModelConfig(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1)
    train_cfg = {"epochs": 1, "batch_size": 2, "warmup_iters": 1, "print_every": 100, "device": "cpu", "weights": "none",
                 **options}
    return model, DataConfig(root=root, workers=0), TrainConfig(out=str(out), **train_cfg)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --- item 3: a second run does not overwrite the first --------------------------------------------


def test_new_run_refuses_a_run_dir_and_exist_ok_says_what_it_replaces(data_root, tmp_path, run_cli):
    run = tmp_path / "run"
    with umask(0o022):
        train(*_cfgs(data_root, run), progress=False)
        for name in OUTPUTS:  # every output gets the umask's mode (mkstemp alone gives 0600)
            assert (run / name).stat().st_mode & 0o777 == 0o644, name
    before = {name: (run / name).read_bytes() for name in OUTPUTS}

    status, err = run_cli(["train", "--data", data_root, "--out", str(run), "--workers", "0", "--device", "cpu"])
    assert status == 2
    assert f"{run} already holds a training run (best.pt, last.pt" in err
    assert f"--resume {run}" in err and "--exist-ok" in err
    assert {name: (run / name).read_bytes() for name in OUTPUTS} == before  # nothing touched

    foreign = b"an interrupted.pt this run did not write"
    (run / "interrupted.pt").write_bytes(foreign)
    summary = train(*_cfgs(data_root, run, seed=1), progress=False, exist_ok=True)
    assert summary["stopped"] == "finished"
    log = (run / "train.log").read_text()
    assert (f"--exist-ok: {run} holds an earlier run; this run replaces its best.pt, last.pt, results.csv, metrics.json, "
            "results.png, config.yaml, classes.json; interrupted.pt is kept unless this run is stopped; "
            "train.log is appended to") in log
    assert (run / "last.pt").read_bytes() != before["last.pt"]
    assert (run / "interrupted.pt").read_bytes() == foreign  # finished, but it deletes only its own


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_the_retry(data_root, tmp_path, monkeypatch, run_cli):
    """The failed fetch's message says "run the command again": the same command must then work."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cached = tmp_path / "home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a broken download")
    run = tmp_path / "run"
    argv = ["train", "--data", data_root, "--out", str(run), "--arch", "resnet18_fpn", "--min-size", "64",
            "--max-size", "64", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    status, err = run_cli([*argv, "--backbone-weights", "imagenet"])
    assert status == 2 and "delete it and run the command again" in err, err
    assert {p.name for p in run.iterdir()} == {"train.log", ".lock"}  # .lock: the run folder's lock file, free now

    status, err = run_cli([*argv, "--from-scratch"])  # the retry (here without the broken file's weights)
    assert status == 0, err
    log = (run / "train.log").read_text()
    assert log.count("retinanet train 2") == 2  # both runs' headers: nothing of the first lost
    assert f"{run} holds a run that stopped before its first checkpoint (train.log): this run starts in it" in log
    assert (run / "last.pt").exists()
    status, err = run_cli([*argv, "--from-scratch"])  # a run with checkpoints is still protected
    assert status == 2 and "already holds a training run" in err


def test_a_full_disk_during_training_ends_with_a_message_naming_the_file(data_root, tmp_path, monkeypatch, run_cli):
    import retinanet.files as io_mod

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_mod.torch, "save", full)
    run = tmp_path / "run"
    status, err = run_cli(["train", "--data", data_root, "--out", str(run), "--arch", "resnet18_fpn", "--from-scratch",
                        "--min-size", "64", "--max-size", "64", "--epochs", "1", "--batch-size", "2", "--workers", "0",
                        "--device", "cpu"])
    assert status == 2, err
    assert f"retinanet train: error: {run / 'last.pt'}: cannot be written (No space left on device); nothing was written" in err
    assert "Traceback" not in err


# --- item 9: --out checked first, for every command -----------------------------------------------


@pytest.mark.parametrize("command", [
    ["train", "--data", "{tmp}/no_such_data"],
    ["eval", "--weights", "{tmp}/no_such.pt", "--data", "{tmp}/no_such_data"],
    ["predict", "{tmp}/no_such.jpg", "--weights", "{tmp}/no_such.pt"],
], ids=["train", "eval", "predict"])
def test_out_that_is_a_file_fails_first_naming_it(tmp_path, command, run_cli):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    argv = [a.format(tmp=tmp_path) for a in command]
    status, err = run_cli([*argv, "--out", str(taken)])
    assert status == 2 and f"--out {taken}: exists and is not a folder" in err, err  # not the missing data/weights
    status, err = run_cli([*argv, "--out", str(taken / "sub")])
    assert status == 2 and f"--out {taken / 'sub'}: cannot be created: {taken} is a file, not a folder" in err, err


def test_export_out_that_is_a_folder_or_under_a_file_fails_first(tmp_path, run_cli):
    (tmp_path / "taken").write_text("a file")
    status, err = run_cli(["export", "--weights", str(tmp_path / "no_such.pt"), "--out", str(tmp_path)])
    assert status == 2 and f"--out {tmp_path}: is a folder (give a file name)" in err, err
    status, err = run_cli(["export", "--weights", str(tmp_path / "no_such.pt"), "--out", str(tmp_path / "taken" / "m.onnx")])
    assert status == 2 and f"cannot be created: {tmp_path / 'taken'} is a file, not a folder" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_out_in_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(RetinaNetError, match=r"cannot write into .*ro \(permission denied or read-only\)"):
            check_output_path(ro / "run" / "deeper", folder=True)
    finally:
        ro.chmod(0o755)


def test_writable_out_passes_and_nothing_is_created(tmp_path):
    assert check_output_path(tmp_path / "a" / "b", folder=True) == tmp_path / "a" / "b"
    assert check_output_path(tmp_path / "m.onnx", folder=False) == tmp_path / "m.onnx"
    assert list(tmp_path.iterdir()) == []


# --- item 11: export without onnx ------------------------------------------------------------------


def _tiny_model():
    torch.manual_seed(0)
    return build_model("resnet18_fpn", num_classes=3, min_size=64, max_size=64, fpn_channels=32, head_convs=1).eval()


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_export_without_onnx_names_the_extra(tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import onnx` fail as if not installed
    with pytest.raises(RetinaNetError, match=rf"needs the {missing} package: pip install 'retinanet\[export\]'"):
        if missing == "onnx":
            export_onnx(_tiny_model(), tmp_path / "m.onnx")
        else:
            verify_onnx(_tiny_model(), tmp_path / "m.onnx", [])
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_without_onnx_exits_2_with_the_hint(tmp_path, monkeypatch, run_cli):
    model = _tiny_model()
    ckpt = save_checkpoint({"model": model.state_dict(), "config": {"model": dataclasses.asdict(model.config)}}, tmp_path / "t.pt")
    monkeypatch.setitem(sys.modules, "onnx", None)
    status, err = run_cli(["export", "--weights", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert status == 2 and "retinanet export: error: export needs the onnx package: pip install 'retinanet[export]'" in err


# --- item 13: atomic outputs with the umask's mode -------------------------------------------------


def test_failure_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old\n")

    def half_then_fail(f):
        f.write(b"new but incomplete")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(RetinaNetError) as err:  # a message for the CLI, not a traceback
        write_atomic(path, half_then_fail)
    assert str(err.value) == f"{path}: cannot be written (No space left on device); the previous version is left as it was"
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["results.csv"]  # no temporary left
    with pytest.raises(RetinaNetError, match=r"new\.csv: cannot be written \(No space left on device\); nothing was written"):
        write_atomic(tmp_path / "new.csv", half_then_fail)
    assert os.listdir(tmp_path) == ["results.csv"]

    def interrupted(f):
        f.write(b"new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {}, "epoch": 0, "x": _RaisesOnPickle()}, path)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, interrupted)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["results.csv"]


class _RaisesOnPickle:
    def __reduce__(self):
        raise KeyboardInterrupt


def test_outputs_get_the_umask_mode(tmp_path):
    with umask(0o022):
        files = [
            save_checkpoint({"model": {}}, tmp_path / "a.pt"),
            write_atomic(tmp_path / "b.txt", "text"),
            write_atomic(tmp_path / "c.bin", b"\x00"),
        ]
        write_config_file(tmp_path / "config.yaml", {"model": ModelConfig()})
        ClassMap({"cat": 1}).save(tmp_path / "classes.json")
        write_predictions_json(tmp_path / "predictions.json", [{"file": "x.jpg"}], [])
        files += [tmp_path / n for n in ("config.yaml", "classes.json", "predictions.json")]
        assert all(f.stat().st_mode & 0o777 == 0o644 for f in files)
    with umask(0o027):
        assert write_atomic(tmp_path / "b.txt", "again").stat().st_mode & 0o777 == 0o640


def test_failed_onnx_export_leaves_the_old_file(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    path = tmp_path / "m.onnx"
    path.write_bytes(b"OLD")

    def write_half_then_fail(model, args, f, **kwargs):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", write_half_then_fail)
    with pytest.raises(RetinaNetError, match="ONNX export failed: exporter crashed"):
        export_onnx(_tiny_model(), path)
    assert path.read_bytes() == b"OLD" and os.listdir(tmp_path) == ["m.onnx"]


def test_resume_of_a_run_folder_takes_its_newer_interrupted_pt_and_not_a_stale_one(tmp_path):
    from retinanet.engine.runtime.run_dir import resume_file

    last, stopped = tmp_path / "last.pt", tmp_path / "interrupted.pt"
    stopped.write_bytes(b"")
    assert resume_file(str(tmp_path)) == stopped  # stopped in epoch 1: no last.pt yet
    last.write_bytes(b"")
    os.utime(stopped, ns=(1, 10**18)), os.utime(last, ns=(1, 2 * 10**18))
    assert resume_file(str(tmp_path)) == last  # resumed from last.pt meanwhile: the old interrupted.pt is stale
    os.utime(stopped, ns=(1, 3 * 10**18))
    assert resume_file(str(tmp_path)) == stopped  # stopped again after that epoch
    assert resume_file(str(last)) == last  # a file is taken as named


def test_resume_of_a_folder_without_a_checkpoint_says_so(tmp_path):
    """`--resume RUN` of a run stopped before its first checkpoint said "RUN/last.pt: no such file"."""
    from retinanet.engine.runtime.run_dir import resume_file
    (tmp_path / "train.log").write_text("retinanet train ...\n")
    with pytest.raises(RetinaNetError, match=r"holds no checkpoint \(last.pt, interrupted.pt\) to resume: its run stopped "
                                             r"before its first one; run the same command without --resume"):
        resume_file(str(tmp_path))
