"""Resume from ``interrupted.pt`` continues at the next step of the interrupted epoch: on CPU with a
fixed seed the final weights equal an uninterrupted run's, bit for bit, wherever the interruption
fell, and with loader workers too (tiny resnet18, 64 px, 3 steps per epoch, augmentation and EMA on).

The interruption is deterministic: SIGTERM is raised in this process right after global step k.
"""

import contextlib
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


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    summary = train(*_cfgs(data_root, out), progress=False)
    return summary, torch.load(out / "last.pt", weights_only=True)


@pytest.mark.parametrize("k, workers", [(2, 0), (3, 0), (5, 0), (2, 2)],  # mid epoch 1, after its last step, mid epoch 2
                         ids=["step2", "step3", "step5", "step2-workers2"])
def test_resume_from_interrupted_is_bit_identical(data_root, tmp_path, uninterrupted, k, workers):
    out = tmp_path / "run"
    with stop_after(k):
        stopped = train(*_cfgs(data_root, out, workers=workers), progress=False)
    assert stopped["stopped"] == "SIGTERM"
    ck = torch.load(out / "interrupted.pt", weights_only=True)
    epoch, step = divmod(k - 1, STEPS_PER_EPOCH)
    assert ck["iteration"] == k and ck["epoch_progress"]["epoch"] == epoch
    assert ck["epoch_progress"]["step"] == step + 1 and ck["epoch_progress"]["steps"] == STEPS_PER_EPOCH

    resumed = train(*_cfgs(data_root, out, workers=workers, resume=str(out / "interrupted.pt")), progress=False)
    assert resumed["stopped"] == "finished"
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
    with pytest.raises(RetinaNetError, match=r"stopped at step 1 of 3 in epoch 1, but this run has 2 steps per epoch"):
        train(*_cfgs(data_root, out, resume=str(out / "interrupted.pt"), batch_size=2), progress=False)
    assert (out / "interrupted.pt").is_file()
