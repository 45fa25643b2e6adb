"""engine/train/report.py: epoch line, results files and the end summary from hand-made epoch rows."""

import csv
import json

import pytest

from retinanet.config import DataConfig
from retinanet.engine.evaluate.coco import METRIC_NAMES
from retinanet.engine.train.report import divergence_warning, eval_command, epoch_line, format_run_summary, make_summary, write_epoch_files


def _row(epoch, ap=None, skipped=0):
    metrics = {k: (ap if ap is None else ap / (i + 1)) for i, k in enumerate(METRIC_NAMES)}
    return {"epoch": epoch, "loss": 1.5 / epoch, "classification": 1.0, "bbox_regression": 0.5 / epoch, "lr": 0.01, **metrics,
            "val_images": None if ap is None else 3, "time_s": 2.0, "eval_s": None if ap is None else 1.0,
            "images_per_s": 4.0, "peak_mem_mb": 100.0 + epoch, "skipped_steps": skipped}


def test_epoch_line_says_evaluated_or_not_and_skipped_steps():
    assert "not evaluated" in epoch_line(_row(1), 2, improved=False)
    line = epoch_line(_row(2, ap=0.5, skipped=3), 2, improved=True)
    assert line.startswith("epoch 2/2: loss 0.7500 lr 0.01 | AP 0.5000 AP50 0.2500") and "(best)" in line
    assert "eval 1.0 s" in line and line.endswith("3 non-finite step(s) skipped")


def test_epoch_files_and_summary(tmp_path):
    history = [_row(1), _row(2, ap=0.4)]
    write_epoch_files(tmp_path, history, best_ap=0.4, best_epoch=2)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert list(rows[0]) == list(history[0]) and rows[0]["AP"] == "" and float(rows[1]["AP"]) == 0.4
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["best_ap"], metrics["best_ap50"], metrics["best_epoch"]) == (0.4, 0.2, 2) and metrics["epochs"] == history
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"

    (tmp_path / "best.pt").write_bytes(b"")
    data_cfg = DataConfig(root="voc", years=("2007",), val_split="test")
    s = make_summary(tmp_path, history, 0.4, 2, "SIGTERM", 3725.0, 2, data_cfg, tmp_path / "voc")
    assert s["images_per_s"] == 4.0 and s["peak_mem_mb"] == 102.0 and s["best_ap50"] == 0.2
    assert s["commands"]["eval"] == eval_command(data_cfg, tmp_path / "voc", tmp_path / "best.pt")
    assert s["commands"]["eval"].endswith("--year 2007 --val-split test")
    text = format_run_summary(s)
    assert "training stopped by SIGTERM: 2 epoch(s) in 1:02:05 on 2 process(es)" in text
    assert "best:   AP 0.4000  AP50 0.2000  (epoch 2)" in text  # 2 processes: resumed by torchrun with 2
    assert f"torchrun --nproc_per_node=2 -m retinanet train --resume {tmp_path}" in text
    one = make_summary(tmp_path, history, 0.4, 2, "SIGTERM", 3725.0, 1, data_cfg, tmp_path / "voc")
    assert one["resume"] == f"retinanet train --resume {tmp_path}"  # the folder: its newest checkpoint
    assert "results.png" in s["files"] and "last.pt" not in s["files"]  # only files that exist
    (tmp_path / "best.pt").unlink()  # a run resumed into a new folder whose epochs have not beaten the old best yet
    assert ("(epoch 2; its best.pt is in the run this one was resumed from (this folder gets one when an epoch beats it))"
            in format_run_summary(make_summary(tmp_path, history, 0.4, 2, "finished", 3725.0, 1, data_cfg, tmp_path / "voc")))


def test_the_summary_of_a_resumed_run_says_where_this_session_took_it_up(tmp_path):
    """A run stopped after 10 of 12 epochs and resumed said "12 epoch(s) in 0:00:20": the history's
    epochs against this session's time (and "1 epoch(s) in 0:00:00" for a finished run resumed)."""
    history = [_row(1, ap=0.3), _row(2, ap=0.4), _row(3, ap=0.35)]
    args = (tmp_path, history, 0.4, 2, "finished", 20.0, 1, DataConfig(root="voc"), tmp_path / "voc")
    fresh = format_run_summary(make_summary(*args))
    assert "training finished: 3 epoch(s) in 0:00:20 on 1 process(es)" in fresh
    resumed = make_summary(*args, resumed_at="epoch 3 at step 5/8")
    assert resumed["resumed_at"] == "epoch 3 at step 5/8" and resumed["time_s"] == 20.0
    assert ("training finished: 3 epoch(s) on 1 process(es); resumed at epoch 3 at step 5/8, this session took 0:00:20"
            in format_run_summary(resumed))


def test_a_run_stopped_before_its_first_epoch_says_no_speed_and_aligns_its_files(tmp_path):
    """A stop in epoch 1 printed "speed:  - train images/s (all processes), peak memory - MiB", and
    interrupted.pt (14 characters) pushed its path out of the 13-character column."""
    args = (tmp_path, [], 0.0, 0, "SIGINT", 5.0, 1, DataConfig(root="voc"), tmp_path / "voc")
    summary = make_summary(*args)
    summary["files"] = {"interrupted.pt": str(tmp_path / "interrupted.pt"), "train.log": str(tmp_path / "train.log")}
    text = format_run_summary(summary)
    assert "  speed:  not measured (no epoch completed)" in text and "images/s" not in text
    assert f"  interrupted.pt {tmp_path / 'interrupted.pt'}" in text and f"  train.log      {tmp_path / 'train.log'}" in text


def test_progress_eta_after_a_mid_epoch_resume_counts_this_runs_steps(tmp_path, monkeypatch):
    import retinanet.engine.train.report as report
    from retinanet.engine.train.report import RunLog, StepProgress

    now = [100.0]
    monkeypatch.setattr(report.time, "time", lambda: now[0])
    with RunLog(tmp_path / "train.log", echo=False) as log, StepProgress(log, 10, "epoch 1/1", 2, show=False, start=6) as bar:
        for i in range(6, 10):  # resumed at step 7 of 10: one second per step
            now[0] += 1.0
            bar.update(i, 0.01, 0.5)
    lines = (tmp_path / "train.log").read_text().splitlines()
    # step 8: 2 steps in 2 s, 2 left -> 2 s (counting the 6 steps before the resume would say 0:00:00)
    assert lines == ["epoch 1/1 step 8/10 loss 0.5000 lr 0.01 eta 0:00:02", "epoch 1/1 step 10/10 loss 0.5000 lr 0.01 eta 0:00:00"]


def test_divergence_warning_when_the_loss_more_than_doubles_its_lowest():
    rows = lambda *losses: [{"epoch": i + 1, "loss": v} for i, v in enumerate(losses)]  # noqa: E731
    assert divergence_warning(rows(1.2), 0.01, None) is None  # one epoch: nothing to compare
    assert divergence_warning(rows(1.2, 0.9, 1.1, 1.7), 0.01, None) is None  # noisy, under 2x the lowest (0.9)
    assert divergence_warning(rows(1.2, None), 0.01, None) is None  # every step skipped: counted elsewhere
    w = divergence_warning(rows(1.2, 0.9, 12.5), 0.008, None)
    assert w == ("warning: the loss rose to 12.5000 in epoch 3, over 2x its lowest (0.9000, epoch 2): training has "
                 "probably diverged; best.pt keeps the best weights so far; consider a lower --lr (now 0.008) or gradient clipping "
                 "(--clip-grad NORM)")
    assert divergence_warning(rows(1.2, 0.9, 12.5), 0.008, 10.0).endswith("consider a lower --lr (now 0.008)")
    assert divergence_warning(rows(1.2, None, 2.5), 0.008, None).startswith("warning: the loss rose to 2.5000 in epoch 3")


def test_a_diverging_run_warns_in_its_log_and_summary(tmp_path, monkeypatch):
    """A real run whose lr jumps after epoch 1 (AdamW, lr 3): the loss explodes but stays finite."""
    import retinanet.engine.train.loop as T
    from retinanet.config import ModelConfig, TrainConfig
    from retinanet.data import make_synthetic

    make_synthetic(tmp_path / "syn", num_train=8, num_val=2, image_size=64, seed=0)
    synthetic = tmp_path / "syn"

    monkeypatch.setattr(T, "lr_factor", lambda it, *a: 1e-4 if it < 4 else 1.0)  # epoch 1: lr 3e-4
    model = ModelConfig(arch="resnet18_fpn", norm="bn", min_size=64, max_size=64, fpn_channels=32, head_convs=1)
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=2, batch_size=2, optimizer="adamw", lr=3.0, eval_every=5,
                      device="cpu", weights="none")
    summary = T.train(model, DataConfig(root=str(synthetic), workers=0), cfg, progress=False)
    assert summary["history"][1]["loss"] > 2 * summary["history"][0]["loss"]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "warning: the loss rose to " in log and "in epoch 2, over 2x its lowest (" in log
    assert "consider a lower --lr (now 3) or gradient clipping (--clip-grad NORM)" in log
    assert ("warning: the loss rose over 2x its lowest in epoch(s) 2: training has probably diverged"
            in format_run_summary(summary))


def test_the_summary_tells_a_spike_that_came_back_from_a_divergence():
    """A one-step epoch's loss spiked over 2x its lowest and the run went on to its lowest loss:
    the summary said "training has probably diverged" about a run that had recovered."""
    def summary(*losses):
        history = [{"epoch": i + 1, "loss": v, "AP": None, "AP50": None, "AR100": None} for i, v in enumerate(losses)]
        return format_run_summary({"history": history, "stopped": "finished", "time_s": 1.0, "world_size": 1,
                                   "best_epoch": 0, "last_metrics": None, "images_per_s": 1.0, "peak_mem_mb": 1.0,
                                   "skipped_steps": 0, "out": "run", "files": {}, "commands": {}})

    recovered = summary(1.9, 1.35, 3.0, 1.21)
    assert "note: the loss rose over 2x its lowest in epoch(s) 3 and came back (last epoch 1.2100)" in recovered
    assert "probably diverged" not in recovered
    assert "epoch(s) 3, 4: training has probably diverged" in summary(1.9, 1.35, 3.0, 2.9)  # still up: diverged
    assert "epoch(s) 3: training has probably diverged" in summary(1.9, 1.35, 3.0, None)  # last epoch skipped


def test_schedule_line_says_which_milestones_a_short_run_never_reaches():
    from retinanet.config import TrainConfig
    from retinanet.engine.train.optim import describe_schedule

    line = describe_schedule(TrainConfig(lr_steps=(16, 22), warmup_iters=0), 0, 10, 1.0)
    assert "x0.1 at epochs 16, 22 (epoch(s) 16, 22 beyond this run's 1: not reached)" in line
    assert "not reached" not in describe_schedule(TrainConfig(lr_steps=(8, 11), warmup_iters=0), 0, 120, 12.0)


def test_what_ends_a_run_is_the_last_line_of_its_log_and_a_lost_peer_is_named_as_such(tmp_path):
    from retinanet.engine.train.report import RunLog, ending_line
    from retinanet.errors import RetinaNetError
    with pytest.raises(RetinaNetError):
        with RunLog(tmp_path / "train.log", echo=False) as log:
            log.line("epoch 1/2 step 1/4")
            raise RetinaNetError("a bad image was met while loading data")
    assert (tmp_path / "train.log").read_text().splitlines()[-1] == "error: a bad image was met while loading data"
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1234")
    assert ending_line(RuntimeError, gloo) == f"error: RuntimeError: {gloo}"  # one process: no peer to blame
    import retinanet.engine.train.report as R
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R.D, "is_dist", lambda: True)
        assert ending_line(RuntimeError, gloo).startswith("error: another process of the run stopped (its own error")
        pipe = BrokenPipeError(32, "Broken pipe")  # its own stdout closed (`| head`): its own error
        assert ending_line(BrokenPipeError, pipe) == f"error: BrokenPipeError: {pipe}"
    assert ending_line(KeyboardInterrupt, KeyboardInterrupt()).startswith("interrupted (a second Ctrl-C")
    assert ending_line(ValueError, ValueError("x")) == "error: ValueError: x"


def test_another_ranks_own_error_is_appended_to_rank_0s_log_and_shared_ones_are_not(tmp_path, monkeypatch):
    import retinanet.engine.train.report as R
    from retinanet.engine.train.report import RunLog
    from retinanet.errors import RetinaNetError

    monkeypatch.setattr(R.D, "is_dist", lambda: True)
    monkeypatch.setattr(R.D, "get_rank", lambda: 1)
    main_log = tmp_path / "train.log"
    main_log.write_text("epoch 1/2 step 1/4\n")

    def end_with(exc: BaseException, errors_to=main_log) -> None:
        with pytest.raises(type(exc)):
            with RunLog(None, echo=False, errors_to=errors_to):
                raise exc

    end_with(RetinaNetError("x.jpg: cannot decode image"))
    assert main_log.read_text().splitlines()[-1] == "rank 1: error: x.jpg: cannot decode image"
    shared = RetinaNetError("10 consecutive non-finite losses")
    shared.every_rank = True  # rank 0 logs it itself
    end_with(shared)
    end_with(KeyboardInterrupt())
    end_with(RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:1234"))  # rank 0 left: its own line says why
    assert main_log.read_text().splitlines()[-1] == "rank 1: error: x.jpg: cannot decode image"
    end_with(RuntimeError("CUDA out of memory"))
    assert main_log.read_text().splitlines()[-1] == "rank 1: error: RuntimeError: CUDA out of memory"
    end_with(RetinaNetError("y"), errors_to=tmp_path / "elsewhere" / "train.log")  # not on this machine's disk
    assert not (tmp_path / "elsewhere").exists()


class _Rusage:
    """A stand-in for the ``resource`` module: ``ru_maxrss`` in the platform's own unit."""
    RUSAGE_SELF = 0

    def __init__(self, maxrss):
        self.maxrss = maxrss

    def getrusage(self, who):
        return type("rusage", (), {"ru_maxrss": self.maxrss})()


@pytest.mark.parametrize("platform, maxrss", [("linux", 512 * 1024), ("darwin", 512 * 2**20), ("freebsd14", 512 * 1024)])
def test_peak_memory_reads_ru_maxrss_in_the_platforms_unit(monkeypatch, platform, maxrss):
    """Linux and the BSDs report ``ru_maxrss`` in KiB, macOS in bytes: 512 MiB either way."""
    import torch
    import retinanet.engine.train.report as report

    monkeypatch.setattr(report, "resource", _Rusage(maxrss))
    monkeypatch.setattr(report.sys, "platform", platform)
    assert report.peak_memory_mb(torch.device("cpu")) == 512.0


def test_without_a_peak_memory_reading_the_lines_say_dash(monkeypatch, tmp_path):
    """No ``resource`` module (Windows' standard library; there the ctypes reading is used, None when it fails):
    the epoch line and the summary say "-" instead of failing."""
    import torch
    import retinanet.engine.train.report as report

    monkeypatch.setattr(report, "resource", None)
    assert report.peak_memory_mb(torch.device("cpu")) is None
    monkeypatch.setattr(report.sys, "platform", "win32")
    assert report.peak_memory_mb(torch.device("cpu")) is None  # no kernel32 here: the Windows reading gives up cleanly
    history = [{**_row(1), "peak_mem_mb": None}, {**_row(2, ap=0.4), "peak_mem_mb": None}]
    assert "peak mem - MiB" in epoch_line(history[0], 2, improved=False)
    s = make_summary(tmp_path, history, 0.4, 2, "finished", 10.0, 1, DataConfig(root="voc"), tmp_path / "voc")
    assert s["peak_mem_mb"] is None and "peak memory - MiB (rank 0)" in format_run_summary(s)


def test_next_and_resume_commands_are_quoted_for_the_platforms_shell(tmp_path, monkeypatch):
    """POSIX shells get ``'run 1'``; cmd.exe and PowerShell do not read single quotes: ``"run 1"`` on Windows."""
    import retinanet.engine.train.report as report

    out = tmp_path / "run 1"
    out.mkdir()
    (out / "best.pt").write_bytes(b"")
    history = [_row(1, ap=0.4)]
    for platform, quoted in (("linux", f"'{out}'"), ("win32", f'"{out}"')):
        monkeypatch.setattr(report.sys, "platform", platform)
        s = make_summary(out, history, 0.4, 1, "SIGINT", 10.0, 1, DataConfig(root="voc"), tmp_path / "voc")
        assert s["resume"] == f"retinanet train --resume {quoted}"
        assert s["commands"]["eval"].startswith(f"retinanet eval --weights {quoted[0]}{out / 'best.pt'}{quoted[0]} ")
        assert all(quoted[0] in c for c in s["commands"].values())


def test_a_cap_reached_at_every_evaluation_is_said_once_and_advised_only_above_the_score_rule(tmp_path, capsys):
    """The cap warning printed at every evaluation (25 lines for 25 epochs, --quiet too) and advised a
    larger detections_per_img for an untrained model's junk boxes (98 tiles at 300 with ~6 objects
    each). Now: train.log counts it at every evaluation, the console hears it once (and once more when
    the advice changes), the advice to raise the cap comes only when what was cut could score at least
    2x the model's score_thresh, and the summary gives the last evaluation's count."""
    from types import SimpleNamespace

    from retinanet.config import ModelConfig
    from retinanet.engine.evaluate.loop import EvalResult
    from retinanet.engine.train.loop import log_caps
    from retinanet.engine.train.report import RunLog

    def evaluated(at_cap, score, at_topk=0, topk_score=0.0):
        return EvalResult({}, [], "", [], max_dets=300, at_cap=at_cap, at_cap_score=score, topk_candidates=1000,
                          at_topk=at_topk, at_topk_score=topk_score)

    with RunLog(tmp_path / "train.log", echo=False) as log:  # --quiet: warnings go to stderr
        run = SimpleNamespace(model=SimpleNamespace(config=ModelConfig()), data_cfg=DataConfig(crop=128), log=log,
                              caps_said=set(), last_caps=[])
        for result in [evaluated(98, 0.07), evaluated(90, 0.08, 3, 0.06), evaluated(26, 0.085), evaluated(27, 0.4),
                       evaluated(27, 0.41)]:
            log_caps(run, result)
    logged = (tmp_path / "train.log").read_text().splitlines()
    assert [line.split(" ", 2)[1] for line in logged] == ["98", "90", "3", "26", "27", "27"]  # every evaluation
    said = capsys.readouterr().err.splitlines()
    assert said == [logged[0], logged[2], logged[4]]  # each kind of warning once
    assert said[0] == ("warning: 98 tile(s) reached the model's detections_per_img 300: the detections beyond it were cut; "
                       "they scored at most 0.07, below 2x the model's score_thresh 0.05: low-score boxes, as a model early "
                       "in training gives; a larger cap would keep more of those, not more objects (said once a run; "
                       "train.log counts it at every evaluation)")
    assert "--topk-candidates" not in said[1] and said[1].startswith(
        "warning: 3 tile(s) stayed below detections_per_img 300 while an FPN level had more candidates above score_thresh "
        "than the 1000 it keeps for NMS: the others were never considered; they scored at most 0.06")
    assert said[2].startswith("warning: 27 tile(s) reached the model's detections_per_img 300: the detections beyond it "
                              "were cut; they scored up to 0.4, at least 2x the model's score_thresh 0.05: train --max-dets "
                              "N keeps them (`retinanet eval --max-dets N` scores this checkpoint with more)")
    assert run.last_caps == ["27 tile(s) reached the model's detections_per_img 300 in the last evaluation; what was cut "
                             "scored at most 0.41: train --max-dets N keeps it"]
    s = make_summary(tmp_path, [_row(1, ap=0.1)], 0.1, 1, "finished", 10.0, 1, DataConfig(root="voc"), tmp_path / "voc")
    s["caps"] = run.last_caps
    assert f"  warning: {run.last_caps[0]}" in format_run_summary(s)
