"""Resume from ``interrupted.pt`` continues at the next step of the interrupted epoch: on CPU with a
fixed seed the final weights equal an uninterrupted run's, bit for bit, wherever the interruption
fell, and with loader workers too (tiny resnet18, 64 px, 3 steps per epoch, augmentation and EMA on).

The interruption is deterministic: SIGTERM is raised in this process right after global step k.
"""

import contextlib
import dataclasses
import json
import signal

import pytest
import torch

import retinanet.engine.train.loop as T
from retinanet.config import DataConfig, ModelConfig, TrainConfig
from retinanet.data import make_synthetic
from retinanet.engine.train.loop import train
from retinanet.errors import RetinaNetError

STEPS_PER_EPOCH = 3  # 3 training images, batch size 1


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=STEPS_PER_EPOCH, num_val=2, image_size=64, seed=0)
    return str(root / "VOCdevkit")


def _cfgs(root, out, workers=0, **options):
    model = ModelConfig(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1)
    # multi-scale (python RNG), photometric and flip (torch RNG): the resumed batches must see the same draws
    data = DataConfig(root=root, workers=workers, train_sizes=(48, 64), photometric=True, hflip_prob=0.5)
    train = {"epochs": 2, "batch_size": 1, "lr": 0.01, "warmup_iters": 3, "ema": True, "ema_ramp_iters": 2,
             "eval_every": 2, "print_every": 100, "device": "cpu", "weights": "none", **options}
    return model, data, TrainConfig(out=str(out), **train)


@contextlib.contextmanager
def stop_after(k: int):
    """SIGTERM to this process right after global step ``k`` (1-based): the run's own handler sets
    its stop flag, as a real signal would, at a known step."""
    real, done = T.train_step, [0]

    def step_then_signal(*args, **kwargs):
        out = real(*args, **kwargs)
        done[0] += 1
        if done[0] == k:
            signal.raise_signal(signal.SIGTERM)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "train_step", step_then_signal)
        yield


@contextlib.contextmanager
def signal_in_evaluation(n: int):
    """SIGTERM to this process as the run's ``n``-th evaluation (1-based) begins; yields ``[evaluations so far]``."""
    real, calls = T.evaluate_epoch, [0]

    def signal_inside(run, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            signal.raise_signal(signal.SIGTERM)
        return real(run, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "evaluate_epoch", signal_inside)
        yield calls


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    summary = train(*_cfgs(data_root, out), progress=False)
    return summary, torch.load(out / "last.pt", weights_only=True)


@pytest.mark.parametrize("k, workers", [(2, 0), (3, 0), (5, 0), (2, 2)],  # mid epoch 1, after its last step, mid epoch 2
                         ids=["step2", "step3", "step5-by-folder", "step2-workers2"])
def test_resume_from_interrupted_is_bit_identical(data_root, tmp_path, uninterrupted, k, workers):
    out = tmp_path / "run"
    with stop_after(k):
        stopped = train(*_cfgs(data_root, out, workers=workers), progress=False)
    assert stopped["stopped"] == "SIGTERM"
    ck = torch.load(out / "interrupted.pt", weights_only=True)
    epoch, step = divmod(k - 1, STEPS_PER_EPOCH)
    assert ck["iteration"] == k and ck["epoch_progress"]["epoch"] == epoch
    assert ck["epoch_progress"]["step"] == step + 1 and ck["epoch_progress"]["steps"] == STEPS_PER_EPOCH

    by_folder = k == 5  # --resume RUN: its interrupted.pt is newer than its last.pt (of epoch 1), and is taken
    resumed = train(*_cfgs(data_root, out, workers=workers, resume=str(out if by_folder else out / "interrupted.pt")),
                    progress=False)
    assert resumed["stopped"] == "finished"
    assert ("its interrupted.pt, written after its last.pt, continues the stopped epoch" in (out / "train.log").read_text()) == by_folder
    full_summary, full = uninterrupted
    got = torch.load(out / "last.pt", weights_only=True)
    for key in ("model", "ema"):
        assert all(torch.equal(full[key][n], got[key][n]) for n in full[key]), key
    assert got["iteration"] == full["iteration"] == 2 * STEPS_PER_EPOCH
    assert got["optimizer"]["param_groups"][0]["lr"] == full["optimizer"]["param_groups"][0]["lr"]
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full_summary["history"]]
    assert resumed["history"][-1]["AP"] == full_summary["history"][-1]["AP"]
    log = (out / "train.log").read_text()
    assert f"after step {step + 1}/{STEPS_PER_EPOCH}" in log
    if step + 1 < STEPS_PER_EPOCH:
        assert f"epoch {epoch + 1} at step {step + 2}/{STEPS_PER_EPOCH} (global step {k})" in log
    assert not (out / "interrupted.pt").exists()  # the run resumed from it and went past it


def test_interrupted_epoch_of_another_length_is_refused(data_root, tmp_path):
    out = tmp_path / "run"
    with stop_after(1):
        train(*_cfgs(data_root, out), progress=False)
    with pytest.raises(RetinaNetError, match=r"batch_size 1 -> 2\n.*--resume-allow batch_size"):
        train(*_cfgs(data_root, out, resume=str(out / "interrupted.pt"), batch_size=2), progress=False)
    # allowed to change, the batch size still cannot continue an epoch cut at another length
    with pytest.raises(RetinaNetError, match=r"stopped at step 1 of 3 in epoch 1, but this run has 2 steps per epoch"):
        train(*_cfgs(data_root, out, resume=str(out / "interrupted.pt"), batch_size=2), progress=False,
              resume_allow=("batch_size",))
    assert (out / "interrupted.pt").is_file()


# --- a resume continues the run it names (issue 22, family 1) --------------------------------------

TINY_CLI = ["--arch", "resnet18_fpn", "--norm", "bn", "--min-size", "64", "--max-size", "64", "--fpn-channels", "32",
            "--head-convs", "1", "--epochs", "1", "--batch-size", "2", "--warmup-iters", "1", "--workers", "0",
            "--device", "cpu", "--from-scratch", "--quiet", "--eval-every", "5"]


def _renamed(root, tmp_path, rename):
    """A copy of the synthetic VOC dataset at ``root`` whose class names are ``rename``d."""
    import shutil

    copy = tmp_path / "renamed" / "VOCdevkit"
    shutil.copytree(root, copy)
    for xml in (copy / "VOC2012" / "Annotations").glob("*.xml"):
        text = xml.read_text()
        for old, new in rename.items():
            text = text.replace(f"<name>{old}</name>", f"<name>{new}</name>")
        xml.write_text(text)
    return str(copy)


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory, run_cli):
    """A one-epoch CLI run (batch size 2) to resume; each test copies it."""
    out = tmp_path_factory.mktemp("base") / "run"
    status, err = run_cli(["train", "--data", data_root, "--out", str(out), *TINY_CLI])
    assert status == 0, err
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def test_resume_with_another_batch_size_is_refused_listing_it_and_the_way_out(run_copy, run_cli):
    config = (run_copy / "config.yaml").read_text()
    status, err = run_cli(["train", "--resume", str(run_copy), "--batch-size", "1", "--lr", "0.02", "--epochs", "2"])
    assert status == 2
    assert "batch_size 2 -> 1" in err and "lr 0.01 -> 0.02" in err and "epochs" not in err
    assert f"--weights {run_copy / 'last.pt'}" in err and "--resume-allow batch_size lr" in err
    assert (run_copy / "config.yaml").read_text() == config  # not rewritten as if the run had used 1


def test_resume_of_a_finished_run_says_there_is_nothing_to_train(run_copy, run_cli):
    config = (run_copy / "config.yaml").read_text()
    status, err = run_cli(["train", "--resume", str(run_copy), "--quiet", "--workers", "1"])
    assert status == 0
    said = "the run already finished its 1 epoch(s) (global step 2), so there is nothing to train; to train on, give a larger --epochs"
    log = (run_copy / "train.log").read_text()
    assert said in err and said in log and log.count("lr schedule:") == 1  # the first run's, none for the resume
    assert "training finished: 1 epoch(s) on 1 process(es); resumed at its end (nothing to train), this session took" in log
    assert (run_copy / "config.yaml").read_text() == config  # the record of the run that trained, not of this call


def test_resume_allow_continues_names_the_change_and_config_yaml_records_it(run_copy, run_cli):
    status, err = run_cli(["train", "--resume", str(run_copy), "--batch-size", "1", "--epochs", "2", "--workers", "1",
                        "--resume-allow", "batch-size"])
    assert status == 0, err
    log = (run_copy / "train.log").read_text()
    assert "resume: --resume-allow: the run continues with batch_size 2 -> 1" in log
    assert "resume: settings changed from the checkpoint's: workers 0 -> 1, epochs 1 -> 2" in log
    config = (run_copy / "config.yaml").read_text()
    assert config.startswith("# this run was resumed with settings changed by --resume-allow")
    assert "#   from epoch 2: batch_size 2 -> 1" in config
    ck = torch.load(run_copy / "last.pt", weights_only=True)
    assert ck["changes"] == ["from epoch 2: batch_size 2 -> 1"] and ck["world_size"] == 1


def test_resume_on_data_with_the_same_class_count_under_other_names_is_refused(data_root, run_copy, tmp_path, run_cli):
    classes = (run_copy / "classes.json").read_text()
    names = list(json.loads(classes))
    other = _renamed(data_root, tmp_path, {names[0]: "zebra"})
    status, err = run_cli(["train", "--resume", str(run_copy), "--data", other, "--epochs", "2"])
    assert status == 2, err
    assert f"root {data_root!r} -> {other!r}" in err and "class map: " in err and "zebra" in err
    assert (run_copy / "classes.json").read_text() == classes
    assert "class_map" in err.split("--resume-allow")[-1]


def test_resume_on_data_with_another_class_count_is_a_message_not_a_size_mismatch(data_root, run_copy, tmp_path, run_cli):
    names = list(json.loads((run_copy / "classes.json").read_text()))
    other = _renamed(data_root, tmp_path, {names[0]: names[1]})  # one class fewer
    status, err = run_cli(["train", "--resume", str(run_copy), "--data", other, "--epochs", "2",
                        "--resume-allow", "root", "class_map"])
    assert status == 2, err
    assert "num_classes" in err and "cannot change: the checkpoint's tensors depend on it" in err
    assert f"classes -> {len(names) - 1}" in err and "size mismatch" not in err and "Traceback" not in err


def test_weights_given_on_resume_are_refused_not_ignored(run_copy, tmp_path, run_cli):
    status, err = run_cli(["train", "--resume", str(run_copy), "--weights", str(run_copy / "best.pt"), "--epochs", "2"])
    assert status == 2 and "weights 'none' -> " in err, err


def test_every_config_field_has_a_resume_rule_and_resume_allow_names_are_checked_when_parsed(capsys):
    from retinanet.cli import main
    from retinanet.config import SECTIONS
    from retinanet.engine.train.resume import RESUME_RULES

    fields = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    assert fields - set(RESUME_RULES) == set()  # a new setting needs its line in RESUME_RULES
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resume", "x", "--resume-allow", "arch"])
    assert exit_.value.code == 2 and "arch cannot change on resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--resume", "x", "--resume-allow", "bogus"])
    assert "unknown setting 'bogus'" in capsys.readouterr().err


def test_a_checkpoint_without_a_process_count_is_resumed_and_the_log_says_it_was_not_checked(finished_run):
    from pathlib import Path

    from retinanet.engine.train.resume import check_resume

    path = Path(finished_run) / "last.pt"
    ck = torch.load(path, weights_only=True)
    model, data, cfg = (ModelConfig(**ck["config"]["model"]), DataConfig(**ck["config"]["data"]),
                        TrainConfig(**ck["config"]["train"]))
    assert check_resume(ck, path, model, data, cfg, ck["class_map"], world_size=1).lines == []
    del ck["world_size"]
    lines = check_resume(ck, path, model, data, cfg, ck["class_map"], world_size=4).lines
    assert lines == ["resume: last.pt does not record its process count (written before checkpoints did), so this "
                     "run's 4 process(es) cannot be checked against it; the effective batch is 4 x batch_size"]


@pytest.mark.parametrize("change, says", [
    ({"optimizer": None}, "holds no training state to resume (optimizer missing"),  # was KeyError: 'optimizer'
    ({k: None for k in ("optimizer", "scaler", "epoch", "iteration", "best_ap", "best_epoch", "rng")},
     "(optimizer, scaler, epoch, iteration, best_ap, best_epoch, rng missing"),  # was KeyError: 'epoch'
    ({"version": 2}, "checkpoint version 2, written by a newer retinanet; this one reads version 1"),  # was resumed as 1
])
def test_a_checkpoint_without_training_state_or_of_a_newer_version_is_refused_by_name(run_copy, run_cli, change, says):
    ck = torch.load(run_copy / "last.pt", weights_only=True)
    ck = {k: v for k, v in {**ck, **change}.items() if v is not None}
    torch.save(ck, run_copy / "last.pt")
    status, err = run_cli(["train", "--resume", str(run_copy), "--epochs", "2", "--resume-allow", "epochs"])
    assert status == 2 and "Traceback" not in err and f"{run_copy / 'last.pt'}: " in err and says in err, err
    if "version" not in change:
        assert f"--weights {run_copy / 'last.pt'}" in err
    else:  # eval and predict read it no more than resume does
        status, err = run_cli(["eval", "--weights", str(run_copy / "last.pt")])
        assert status == 2 and says in err, err


def test_a_newer_checkpoint_with_a_setting_this_version_lacks_is_refused_as_newer(run_copy, run_cli):
    """A newer retinanet's checkpoint stores settings this one does not know: resume and eval read
    its configs first, and said 'unknown option(s) in model' instead of naming the newer version."""
    ck = torch.load(run_copy / "last.pt", weights_only=True)
    ck["version"] = 2
    ck["config"]["model"]["a_setting_of_version_2"] = 1
    torch.save(ck, run_copy / "last.pt")
    for argv in (["train", "--resume", str(run_copy), "--epochs", "2", "--resume-allow", "epochs"],
                 ["eval", "--weights", str(run_copy / "last.pt")]):
        status, err = run_cli(argv)
        assert status == 2 and "written by a newer retinanet" in err and "unknown option" not in err, err


def test_interrupted_pt_holds_the_epoch_s_loss_sums_averaged_over_ranks(data_root, tmp_path, monkeypatch):
    """Under DDP rank 0's own sums stood for every rank's share of the stopped epoch: the resumed
    run's row for it held rank 0's mean loss. Here a second rank with zero sums is simulated by the
    mean: the saved sums must be the reduced ones."""
    import retinanet.engine.runtime.distributed as D

    out = tmp_path / "run"
    real = D.all_reduce_mean
    monkeypatch.setattr(D, "all_reduce_mean", lambda v: real(v) / 2)  # this rank's sums and another rank's zeros
    seen = {}
    real_stop = T.stop_run
    monkeypatch.setattr(T, "stop_run", lambda run, state, epoch, stats: seen.setdefault("sums", dict(stats.sums))
                        and real_stop(run, state, epoch, stats))
    with stop_after(2):
        train(*_cfgs(data_root, out), progress=False)
    saved = torch.load(out / "interrupted.pt", weights_only=True)["epoch_progress"]["sums"]
    assert saved and saved == pytest.approx({k: v / 2 for k, v in seen["sums"].items()})


def test_config_yaml_names_the_data_by_absolute_path_and_an_older_relative_one_still_resumes(tmp_path, monkeypatch):
    """`--config RUN/config.yaml` from another folder read `root: data` there: not found, or another dataset."""
    import yaml

    from retinanet.data import make_synthetic
    from retinanet.engine.runtime.checkpoint import read_checkpoint, save_checkpoint

    make_synthetic(tmp_path / "syn", num_train=4, num_val=1, image_size=64, seed=0)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    model, data, cfg = _cfgs("syn", out, epochs=1, ema=False)
    train(model, data, cfg, progress=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["root"] == str(tmp_path / "syn")
    ck = read_checkpoint(out / "last.pt")  # as runs before this change stored it: relative
    ck["config"]["data"]["root"] = "syn"
    save_checkpoint(ck, out / "last.pt")
    resumed = train(*_cfgs("syn", out, epochs=2, ema=False, resume=str(out)), progress=False)
    assert resumed["stopped"] == "finished" and len(resumed["history"]) == 2


def test_a_signal_during_the_evaluation_stops_after_it_with_last_pt(data_root, tmp_path, uninterrupted):
    """Ctrl-C while an epoch is being evaluated: the evaluation is cut short (under torchrun the
    workers are killed 30 s after the signal: a long evaluation lost the checkpoint), last.pt is
    written, and the run stops there (it trained a step of the next epoch before); the resume from
    it ends as an uninterrupted run."""
    out = tmp_path / "run"
    with signal_in_evaluation(1):
        stopped = train(*_cfgs(data_root, out, eval_every=1), progress=False)
    assert stopped["stopped"] == "SIGTERM" and len(stopped["history"]) == 1
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == STEPS_PER_EPOCH  # no step of epoch 2
    assert not (out / "interrupted.pt").exists()
    log = (out / "train.log").read_text()
    assert "stopped by SIGTERM after epoch 1; checkpoint" in log  # at once: torchrun kills its workers 30 s after a signal
    assert "the evaluation of epoch 1 was cut short by SIGTERM: the epoch is saved unscored" in log
    assert stopped["history"][0]["AP"] is None
    resumed = train(*_cfgs(data_root, out, eval_every=1, resume=str(out)), progress=False)
    got, (_, full) = torch.load(out / "last.pt", weights_only=True), uninterrupted
    assert resumed["stopped"] == "finished" and got["iteration"] == full["iteration"]
    assert all(torch.equal(full["model"][n], got["model"][n]) for n in full["model"])


def test_the_final_evaluation_is_not_cut_short(data_root, tmp_path):
    """A stop during the run's last evaluation: cut, the run would end unscored with nothing left to
    resume; it completes instead, and the run is finished."""
    with signal_in_evaluation(2) as calls:
        done = train(*_cfgs(data_root, tmp_path / "run", eval_every=1), progress=False)
    assert done["stopped"] == "finished" and done["history"][-1]["AP"] is not None and calls == [2]


def test_a_second_signal_stops_at_once_and_the_first_is_acknowledged(capfd):
    from retinanet.engine.train.setup import StopFlag

    flag = StopFlag(announce=True)
    flag(signal.SIGINT, None)
    assert flag.signal == "SIGINT"
    assert "SIGINT: stopping after the current step, or when the evaluation under way is cut short" in capfd.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        flag(signal.SIGINT, None)
    quiet = StopFlag(announce=False)  # the other ranks of a torchrun run say nothing
    quiet(signal.SIGTERM, None)
    assert quiet.signal == "SIGTERM" and capfd.readouterr().err == ""
    under_torchrun = StopFlag(distributed=True)
    under_torchrun(signal.SIGINT, None)
    assert "stopping at the next logging point (every --print-every steps" in capfd.readouterr().err
    inherited = StopFlag()
    inherited._pid = -1  # as in a loader worker forked with the handler: the worker neither says nor sets anything
    inherited(signal.SIGINT, None)
    assert inherited.signal is None and capfd.readouterr().err == ""


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_val_image_keeps_the_trained_epoch_and_the_error_is_in_train_log(tmp_path, monkeypatch, workers):
    """With workers, also: the loaders' workers (the val ones live across evaluations) have ended
    when the error leaves ``train``, whose traceback still holds the run."""
    root = tmp_path / "syn"
    make_synthetic(root, num_train=STEPS_PER_EPOCH, num_val=2, image_size=64, seed=0)
    val = (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "val.txt").read_text().split()
    (root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{val[0]}.jpg").write_bytes(b"\xff\xd8\xff broken")
    out = tmp_path / "run"
    started, real = [], T.evaluate

    def spy(model, loader, **kwargs):
        try:
            return real(model, loader, **kwargs)
        finally:
            started.extend(loader._iterator._workers if loader._iterator is not None else ())

    monkeypatch.setattr(T, "evaluate", spy)
    with pytest.raises(RetinaNetError, match="cannot decode image"):
        train(*_cfgs(str(root / "VOCdevkit"), out, workers=workers, eval_every=1), progress=False)
    assert len(started) == workers and not any(w.is_alive() for w in started)
    assert torch.load(out / "last.pt", weights_only=True)["iteration"] == STEPS_PER_EPOCH  # the epoch was not lost
    log = (out / "train.log").read_text()
    assert "the evaluation after epoch 1 failed: the epoch's weights are in" in log
    assert log.rstrip().splitlines()[-2].startswith("error: a bad image was met while loading data")


def test_more_epochs_on_resume_do_not_start_the_warmup_again(data_root, tmp_path):
    """A 2-epoch run (warmup 3 steps, over after epoch 1) resumed with --epochs 30: the warmup a
    30-epoch schedule would resolve (20 steps: under half of 90) is not started again at step 7."""
    out = tmp_path / "run"
    train(*_cfgs(data_root, out, warmup_iters=20, warmup_max_fraction=0.5), progress=False)  # warmup 3 of 6 steps
    assert torch.load(out / "last.pt", weights_only=True)["warmup"] == 3
    import os
    (out / "interrupted.pt").write_bytes((out / "last.pt").read_bytes())  # a stop from before last.pt: stale
    old = (out / "last.pt").stat().st_mtime_ns - 10**9
    os.utime(out / "interrupted.pt", ns=(old, old))
    seen = []
    real = T.set_lr

    def spy(optimizer, lr):
        seen.append(lr)
        return real(optimizer, lr)

    with pytest.MonkeyPatch.context() as mp, stop_after(1):  # one step of epoch 3 is enough to see its lr
        mp.setattr(T, "set_lr", spy)
        train(*_cfgs(data_root, out, warmup_iters=20, warmup_max_fraction=0.5, epochs=30, resume=str(out)),
              progress=False, resume_allow=("epochs",))
    assert seen == [0.01]  # the peak lr (warming up again over 20 of the 90 steps gave 0.0037 at step 7)
    log = (out / "train.log").read_text()
    assert "warmup 3 steps" in log and "the run's warmup, kept on resume: not resolved again from a changed schedule" in log
    assert f"{out / 'interrupted.pt'} is older than the checkpoint this run continues from (last.pt): a stop before it, stale" in log


def test_resuming_an_older_checkpoint_into_its_folder_is_refused_not_a_silent_rewind(data_root, tmp_path):
    """--resume RUN/best.pt (epoch 1) where RUN/last.pt is at epoch 2: it trained epoch 2 again and
    replaced last.pt and results.csv's row without a word. Refused, naming the ways out; --exist-ok
    goes back on purpose; into a new --out it branches."""
    import shutil
    out = tmp_path / "run"
    train(*_cfgs(data_root, out, eval_every=1), progress=False)
    older = tmp_path / "epoch1.pt"
    ck = torch.load(out / "last.pt", weights_only=True)
    ck = {**ck, "epoch": 0, "history": ck["history"][:1]}  # what best.pt holds when epoch 1 was the best
    torch.save(ck, older)
    shutil.copy(older, out / "best_epoch1.pt")
    with pytest.raises(RetinaNetError, match=rf"it ends after epoch 1, and {out} holds the run up to epoch 2 .* would "
                                             r"train epochs 2..2 again .* resume from .* branch with --out NEW_DIR"):
        train(*_cfgs(data_root, out, eval_every=1, resume=str(out / "best_epoch1.pt")), progress=False)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1  # untouched
    branched = train(*_cfgs(data_root, tmp_path / "branch", eval_every=1, resume=str(out / "best_epoch1.pt")), progress=False)
    assert branched["stopped"] == "finished"


def _ddp_resume_worker(rank: int, port: int, root: str, out: str) -> None:
    """One of 2 gloo processes (torchrun's environment): the run uninterrupted, then stopped by
    SIGTERM on rank 0 after global step 2 (every rank stops at that logging point) and resumed."""
    import os

    import torch.distributed as dist
    from retinanet.cli import main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    argv = ["train", "--data", root, "--arch", "resnet18_fpn", "--from-scratch", "--fpn-channels", "32", "--head-convs",
            "1", "--min-size", "64", "--max-size", "64", "--train-sizes", "48", "64", "--photometric", "--ema",
            "--epochs", "2", "--batch-size", "1", "--lr", "0.01", "--warmup-iters", "2", "--print-every", "2",
            "--device", "cpu", "--workers", "0", "--seed", "0", "--quiet"]
    try:
        assert main([*argv, "--out", f"{out}/full"]) == 0
        with stop_after(2 if rank == 0 else 0):
            main([*argv, "--out", f"{out}/part"])
        dist.barrier()  # rank 0 has written interrupted.pt (torchrun: the next command)
        assert main(["train", "--resume", f"{out}/part/interrupted.pt", "--out", f"{out}/part", "--quiet"]) == 0
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # 3 runs in 2 spawned processes: 40-55 s on 2 busy cores
def test_a_torchrun_run_resumed_mid_epoch_has_the_uninterrupted_runs_losses_to_the_last_bit(tmp_path, free_port):
    """2 gloo processes, 7 steps per epoch, stopped after step 2 and resumed: the stopped epoch's
    loss differed in its 16th digit (2.9582585436957225 for 2.958258543695722) when every rank
    restored the ranks' mean sums (each rank's sum / 7 rounds apart); each rank now restores its own."""
    import torch.multiprocessing as mp

    make_synthetic(tmp_path / "syn", num_train=14, num_val=4, image_size=128, seed=0)
    mp.spawn(_ddp_resume_worker, args=(free_port(), str(tmp_path / "syn"), str(tmp_path)), nprocs=2, join=True)
    part = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert "stopped by SIGTERM in epoch 1 after step 2/7" in (tmp_path / "part" / "train.log").read_text()
    for key in ("model", "ema"):
        assert all(torch.equal(full[key][n], part[key][n]) for n in full[key]), key
    losses = [{k: row[k] for k in ("loss", "classification", "bbox_regression")} for row in full["history"]]
    assert [{k: row[k] for k in ("loss", "classification", "bbox_regression")} for row in part["history"]] == losses
