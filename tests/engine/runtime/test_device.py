"""``--device`` / ``Detector.load(device=...)``: a device this machine cannot run is named before any work."""

import pytest
import torch

from retinanet.engine.runtime.device import usable_device
from retinanet.errors import RetinaNetError


def test_names_and_auto():
    assert usable_device("cpu") == torch.device("cpu") and usable_device(torch.device("cpu")) == torch.device("cpu")
    assert usable_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RetinaNetError, match=r"device 'banana': not a device name \(auto, cpu, cuda"):
        usable_device("banana")


def test_a_gpu_that_is_not_here_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RetinaNetError, match="device cuda: no CUDA GPU is usable here .* use --device cpu"):
        usable_device("cuda")
    assert usable_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RetinaNetError, match="device cuda:2: this machine has 2 CUDA device.s., cuda:0 to cuda:1"):
        usable_device("cuda:2")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine runs MPS")
def test_another_kind_this_build_cannot_run_is_one_line():
    with pytest.raises(RetinaNetError) as err:
        usable_device("mps")
    assert str(err.value).startswith("device mps: not usable here (") and "\n" not in str(err.value)
    assert len(str(err.value)) < 260


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_commands_and_the_api_refuse_it_before_any_work(tmp_path, run_cli):
    import retinanet

    status, err = run_cli(["train", "--data", str(tmp_path / "nothing"), "--device", "cuda", "--out", str(tmp_path / "run")])
    assert status == 2 and "retinanet train: error: device cuda: no CUDA GPU is usable here" in err
    assert not (tmp_path / "run").exists()  # nothing left behind
    with pytest.raises(RetinaNetError, match="device cuda: no CUDA GPU"):
        retinanet.Detector.load(tmp_path / "missing.pt", device="cuda")  # the device first, then the file
