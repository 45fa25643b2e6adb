"""engine/budget.py: fitting epochs, evaluations and warmup to a time budget; the deadline."""

import dataclasses
import time

import pytest
import torch

from retinanet.config import TrainConfig
from retinanet.engine.train.budget import MARGIN, Deadline, apply_fit, fit_schedule, refit_at, refit_steps
from retinanet.engine.train.optim import resolve_warmup
from retinanet.errors import RetinaNetError


def test_fit_fills_the_budget_with_steps_and_the_last_evaluation():
    cfg = TrainConfig(epochs=14, eval_every=5, warmup_iters=300, warmup_max_fraction=0.2)
    # the demo on an idle 2-core AVX2 CPU: 63 steps of 1.5 s per epoch, 20 s per evaluation, 4 min, 10 s used
    fit = fit_schedule(cfg, budget_s=240, used_s=10, step_s=1.5, steps_per_epoch=63, eval_s=20)
    total = fit.used_s + fit.steps * 1.5 + fit.evaluations * fit.eval_s
    assert total <= 240 * (1 - MARGIN) < total + 1.5  # fits, and one more step would not
    # 133 steps with the last evaluation only; a second one (after epoch 1) costs 13 steps, < 10% of them
    assert fit.steps == 120 and fit.epochs == 2 and fit.evaluations == 2  # 1.9 epochs: the second stops part way
    assert fit.warmup_iters == int(0.2 * 120)  # capped at the fitted run's share
    line = fit.describe(cfg)
    assert "4.0 min" in line and "1.50 s/step" in line and "-> 120 steps (1.90 epochs" in line and "warmup 24" in line
    # the default multistep milestones (epochs 8, 11) lie beyond 1.9 epochs: said, not "ending with the last step"
    assert ("multistep schedule whose milestone(s) at epoch(s) 8, 11 lie beyond the fitted 1.90 epochs, so the lr does "
            "not decay there (--scheduler cosine ends with the budget)") in line
    assert "cosine schedule ending with the last step" in fit.describe(dataclasses.replace(cfg, scheduler="cosine"))
    assert "multistep schedule (x0.1 at epochs 1)" in fit.describe(dataclasses.replace(cfg, lr_steps=(1,)))


def test_a_longer_budget_adds_steps_and_evaluations_within_their_share():
    cfg = TrainConfig(warmup_iters=100)
    short = fit_schedule(cfg, 600, 0, 0.5, 100, 10)
    long = fit_schedule(cfg, 6000, 0, 0.5, 100, 10)
    assert long.steps > 9 * short.steps
    assert long.evaluations > 1 and (long.evaluations - 1) * 10 <= 0.1 * 6000
    assert long.warmup_iters == 100  # long enough: warmup_iters as given
    for fit in (short, long):
        assert fit.steps * 0.5 + fit.evaluations * 10 <= fit.budget_s * (1 - MARGIN)
        assert fit.epochs == -(-fit.steps // 100)


def test_a_budget_below_one_step_keeps_one_and_says_so():
    fit = fit_schedule(TrainConfig(), budget_s=60, used_s=55, step_s=2.0, steps_per_epoch=100, eval_s=5)
    assert (fit.steps, fit.epochs, fit.eval_every) == (1, 1, 1)
    assert "the start-up took the whole budget" in fit.describe(TrainConfig())
    with pytest.raises(RetinaNetError, match="--time must be > 0 minutes"):
        fit_schedule(TrainConfig(), 0, 0, 1, 1, 1)


def test_apply_fit_records_the_schedule_for_a_resume():
    given = TrainConfig(time=1000 / 60, warmup_iters=50)
    fit = fit_schedule(given, 1000, 0, 1.0, 10, 5)
    cfg = apply_fit(given, fit)
    assert (cfg.epochs, cfg.eval_every, cfg.max_steps, cfg.time_fitted) == (fit.epochs, fit.eval_every, fit.steps, True)
    assert resolve_warmup(cfg, cfg.max_steps) == fit.warmup_iters  # the warmup follows from the stored steps


def test_deadline_leaves_room_for_the_last_evaluation():
    now = [100.0]
    d = Deadline(started=100.0, budget_s=60, eval_s=10, clock=lambda: now[0])
    now[0] = 149.9
    assert not d.passed()
    now[0] = 150.0
    assert d.passed()
    assert not Deadline(started=0.0, budget_s=None, clock=lambda: 1e9).passed()


def test_refit_fills_the_time_left_at_the_speed_seen_with_the_evaluations_between():
    # the demo's case: 1.10 s measured at the start, 1.00 s seen over the first 40 steps, 200 s left
    total = refit_steps(done=40, step_s=1.0, left_s=200, eval_s=5, steps_per_epoch=63, eval_every=2)
    # 192 s after the margin; the steps reach epoch 4, so the evaluation after epoch 2 comes first
    assert total == 40 + (192 - 5) // 1 == 227
    assert refit_steps(40, 1.0, 200, 5, 63, eval_every=5) == 40 + 192  # no evaluation before the last
    assert refit_steps(40, 10.0, 1.0, 5, 63, 1) == 41  # slower than the time left: one more step
    fit = fit_schedule(TrainConfig(), 300, 5, 1.1, 63, 4)
    assert refit_at(fit) == -(-fit.steps // 5) and refit_at(fit_schedule(TrainConfig(), 60, 0, 10.0, 2, 5)) is None


def test_deadline_counts_training_seconds_without_the_evaluations():
    now = [0.0]
    d = Deadline(started=0.0, budget_s=100, eval_s=10, clock=lambda: now[0], refit_at=12)
    now[0] = 4.0
    d.begin_training()
    now[0] = 30.0
    d.evaluated(6.0)
    assert d.training_s() == 20.0 and d.left_s() == 60.0 and d.refit_at == 12


class _SlowLoader:
    """A val loader of 5 batches whose first takes 0.2 s to come (a fake: only what measure_eval uses)."""

    def __init__(self, num_workers: int):
        self.num_workers, self.iterations = num_workers, 0

    def __len__(self):
        return 5

    def __iter__(self):
        self.iterations += 1
        time.sleep(0.2)
        yield [torch.zeros(3, 32, 32, dtype=torch.uint8)], [{}]


@pytest.mark.parametrize("crop", [None, 32])
@pytest.mark.parametrize("workers", [0, 2])
def test_measure_eval_starts_the_val_workers_and_counts_loading_done_by_the_main_process(workers, crop):
    """The val loader's workers serve every evaluation of a run: measure_eval takes its first batch
    (a --crop run too), so their start-up is spent before the fit, not in each evaluation; without
    workers the main process loads each batch as the evaluation goes, and that time counts."""
    from types import SimpleNamespace

    from retinanet.config import ModelConfig
    from retinanet.engine.runtime.precision import resolve_precision

    class Instant(torch.nn.Module):
        config = ModelConfig()

        def forward(self, images, resize=True):
            return []

    loader = _SlowLoader(workers)
    records = [SimpleNamespace(size=(32, 32), file="a.jpg")] * 5  # one 32 px tile each
    run = SimpleNamespace(ema=None, model=Instant(), data_cfg=SimpleNamespace(crop=crop), cfg=SimpleNamespace(batch_size=1),
                          device=torch.device("cpu"), precision=resolve_precision("off", "cpu"), val_loader=loader,
                          data=SimpleNamespace(val=SimpleNamespace(records=records, exif="auto")))
    eval_s = B.measure_eval(run)
    assert loader.iterations == 1
    if workers:
        assert 1.0 <= eval_s < 1.5  # the model's time (none) and the metrics' 1 s: the workers load meanwhile
    else:
        assert eval_s >= 1.0 + 1.2 * 5 * 0.2  # each of the 5 batches loaded as slowly as the first


# --- the training run under --time ----------------------------------------------------------------

import csv  # noqa: E402

import yaml  # noqa: E402

import retinanet.engine.train.budget as B  # noqa: E402
import retinanet.engine.train.loop as L  # noqa: E402
from retinanet.cli import main  # noqa: E402
from retinanet.data import make_synthetic  # noqa: E402

TINY = ["--arch", "resnet18_fpn", "--from-scratch", "--min-size", "64", "--max-size", "64", "--fpn-channels", "32",
        "--head-convs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--lr", "0.01", "--quiet"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, num_train=4, num_val=2, image_size=64, seed=0)
    return str(root / "VOCdevkit")


def _fixed_fit(monkeypatch, step_s=10.0, eval_s=5.0, calls=None):
    """fit_run measures nothing: the same schedule on any machine (2 steps per epoch of 10 s each,
    a 5 s evaluation: a 1-minute budget holds 5 steps, 2.5 epochs)."""
    def fake(run, step, started):
        if calls is not None:
            calls.append(run.cfg.time)
        return B.fit_schedule(run.cfg, run.cfg.time * 60, 0.0, step_s, len(run.train_loader), eval_s)
    monkeypatch.setattr(L, "fit_run", fake)


def test_time_fits_the_epochs_and_a_resume_keeps_them(data_root, tmp_path, monkeypatch, capsys):
    calls = []
    _fixed_fit(monkeypatch, calls=calls)
    monkeypatch.setattr(B.Deadline, "passed", lambda self: False)
    run = tmp_path / "run"
    assert main(["train", "--data", data_root, *TINY, "--time", "1", "--scheduler", "cosine", "--out", str(run)]) == 0
    log = (run / "train.log").read_text()
    assert "time budget 1.0 min: measured 10.00 s/step" in log and "-> 5 steps (2.50 epochs" in log
    assert "(the config's 12 epochs are replaced)" in log and "lr schedule: 5 steps (2.5 epochs)" in log
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["epochs"], saved["max_steps"], saved["time"], saved["time_fitted"]) == (3, 5, 1.0, True)
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert len(rows) == 3 and (run / "best.pt").is_file()
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 5  # the third epoch stopped after its first step
    assert float(rows[-1]["lr"]) < 0.01 * 0.1  # the cosine schedule ends with the fitted steps
    assert calls == [1.0]
    # a resume keeps the fitted schedule: not measured again; refused with a new --time
    ck = torch.load(run / "last.pt", weights_only=True)
    ck["epoch"], ck["iteration"], ck["history"] = 0, 2, ck["history"][:1]  # as if it had stopped after epoch 1
    torch.save(ck, run / "mid.pt")
    assert main(["train", "--resume", str(run / "mid.pt"), "--quiet", "--exist-ok"]) == 0  # back to epoch 1 on purpose
    assert calls == [1.0]
    log = (run / "train.log").read_text()
    assert "fitted when the run started (5 steps in 3 epoch(s)" in log and "it is kept (a resumed run" in log
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 5
    assert main(["train", "--resume", str(run / "mid.pt"), "--time", "2"]) == 2
    assert "--time and --resume together" in capsys.readouterr().err


def test_the_run_stops_at_the_deadline_and_still_evaluates_and_saves_best(data_root, tmp_path, monkeypatch):
    _fixed_fit(monkeypatch, step_s=1.0, eval_s=1.0)  # 1 s steps: a 1-minute budget fits many epochs
    checks = iter([False, True])  # the deadline passes at the second step
    monkeypatch.setattr(B.Deadline, "passed", lambda self: next(checks, True))
    run = tmp_path / "run"
    assert main(["train", "--data", data_root, *TINY, "--time", "1", "--out", str(run)]) == 0
    log = (run / "train.log").read_text()
    assert "time budget: training stops after step 2/2 of epoch 1/" in log
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert len(rows) == 1 and rows[0]["AP"] != "" and float(rows[0]["loss"]) > 0  # evaluated, losses read
    assert (run / "best.pt").is_file() and "training finished" in log


@pytest.mark.parametrize("argv, match", [(["--time", "1", "--epochs", "3"], "--time and --epochs together"),
                                         (["--time", "1", "--eval-every", "2"], "--time and --eval-every together"),
                                         (["--time", "0"], "argument --time: must be a finite number above 0")])
def test_time_refuses_what_it_would_override(data_root, tmp_path, capsys, argv, match):
    try:
        code = main(["train", "--data", data_root, *TINY, "--out", str(tmp_path / "r"), *argv])
    except SystemExit as exit_:  # refused when the command line is parsed (config.LIMITS)
        code = exit_.code
    assert code == 2
    assert match in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_measuring_leaves_the_run_as_it_was(data_root, tmp_path, monkeypatch):
    """The measured steps are undone: a --time run's first epoch trains exactly as an --epochs run's."""
    import retinanet.engine.train.setup as S

    states = {}
    real = L.run_epochs

    def capture(run, state):
        states[run.cfg.time] = {k: v.clone() for k, v in run.model.state_dict().items()}
        return "finished"
    monkeypatch.setattr(L, "run_epochs", capture)
    assert main(["train", "--data", data_root, *TINY, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "--data", data_root, *TINY, "--time", "5", "--out", str(tmp_path / "b")]) == 0
    a, b = states[None], states[5.0]
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights and BatchNorm statistics as built
    assert real is not None and S is not None


@pytest.mark.slow
def test_time_under_ddp_fits_once_and_every_rank_follows(tmp_path, torchrun):
    """torchrun with 2 CPU processes: rank 0's measurement decides, every rank runs the fitted
    epochs (a rank with other epochs would hang or fail the run), one fit line."""
    make_synthetic(tmp_path / "syn", num_train=8, num_val=2, image_size=64, seed=0)
    run = tmp_path / "run"
    proc = torchrun("train", "--data", str(tmp_path / "syn"), *[a for a in TINY if a != "--quiet"], "--time", "1.5",
                    "--out", str(run), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert log.count("time budget 1.5 min: measured") == 1 and "training finished" in log
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["time_fitted"] is True and len(list(csv.DictReader((run / "results.csv").open()))) <= saved["epochs"]


def test_a_slow_evaluation_moves_the_deadline_earlier():
    d = Deadline(started=0.0, budget_s=100, eval_s=10, clock=lambda: 85.0)
    assert not d.passed()
    d.evaluated(5.0)  # faster than estimated: the estimate stays
    assert not d.passed() and d.eval_s == 10
    d.evaluated(20.0)  # the last evaluation will need as long: stop 10 s earlier
    assert d.passed() and d.eval_s == 20


def test_epochs_on_the_command_line_replace_a_fitted_schedule_of_a_config(tmp_path):
    """`--config RUN_DIR/config.yaml` of a --time run keeps its fitted steps; `--epochs N` there means N whole epochs."""
    from retinanet.cli import build_parser
    from retinanet.cli.train import train_configs

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"epochs": 3, "max_steps": 5, "time": 1.0, "time_fitted": True}}))
    parse = build_parser().parse_args
    kept = train_configs(parse(["train", "--config", str(cfg)]))[2]
    assert (kept.epochs, kept.max_steps, kept.time_fitted) == (3, 5, True)
    replaced = train_configs(parse(["train", "--config", str(cfg), "--epochs", "7"]))[2]
    assert (replaced.epochs, replaced.max_steps, replaced.time, replaced.time_fitted) == (7, None, None, False)
    refit = train_configs(parse(["train", "--config", str(cfg), "--time", "2"]))[2]
    assert (refit.time, refit.time_fitted) == (2.0, False)


def test_a_run_faster_than_its_first_steps_refits_once_and_ends_at_the_budget(data_root, tmp_path, monkeypatch):
    """Fitted to 2 s steps (26 in 1 minute, evaluating every 3 epochs of 2 steps); after step 10
    the run has taken 1 s a step and has 30 s left: 28.8 s after the margin, less 4 evaluations of
    1 s (after epochs 6, 9, 12, 15) hold 24 more steps. It refits once, says so, and stores them."""
    _fixed_fit(monkeypatch, step_s=2.0, eval_s=1.0)
    monkeypatch.setattr(B.Deadline, "passed", lambda self: False)
    monkeypatch.setattr(B.Deadline, "training_s", lambda self: 10.0)
    monkeypatch.setattr(B.Deadline, "left_s", lambda self: 30.0)
    run = tmp_path / "run"
    assert main(["train", "--data", data_root, *TINY, "--time", "1", "--scheduler", "cosine",
                 "--out", str(run)]) == 0
    log = (run / "train.log").read_text()
    assert "-> 26 steps (13.00 epochs" in log
    assert "time budget: the 10 steps so far took 1.00 s each (26 steps were fitted" in log
    assert "the schedule now ends after step 34 instead (17.00 epochs)" in log
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["max_steps"], saved["epochs"]) == (34, 17)
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["iteration"] == 34 and ck["epoch"] == 16
    assert len(list(csv.DictReader((run / "results.csv").open()))) == 17
    assert float(list(csv.DictReader((run / "results.csv").open()))[-1]["lr"]) < 0.01 * 0.01  # the cosine ends with step 34
