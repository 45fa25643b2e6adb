"""Named weights (fetched once into $TORCH_HOME, hash-checked, offline message), weights-file errors,
the FrozenBatchNorm eps of torchvision files and of our checkpoints. No test touches the network:
files are served from the test with file:// URLs."""

import hashlib

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

import retinanet.model.weights as W
from retinanet.engine.runtime.checkpoint import save_checkpoint
from retinanet.engine.runtime.checkpoint import load_model, model_config_of
from retinanet.errors import CheckpointError
from retinanet import build_model, load_weights

TINY = dict(min_size=64, max_size=64, fpn_channels=32, head_convs=1)


def serve(folder, stem: str, state: dict) -> tuple[str, str]:
    """Save ``state`` as ``stem-<8 hex of its sha256>.pth``; its file:// URL and full digest."""
    tmp = folder / "staging.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path.as_uri(), digest


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_fetch_downloads_into_torch_home_once_and_checks_the_cached_file(tmp_path, torch_home, monkeypatch):
    url, digest = serve(tmp_path, "resnet18", {"conv1.weight": torch.ones(2)})
    monkeypatch.setitem(W.IMAGENET_URLS, "resnet18", url)
    path, got = W.weights_file("imagenet", "resnet18", progress=False)
    assert path == torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1] and got == digest

    calls = []
    monkeypatch.setattr(W.torch.hub, "download_url_to_file", lambda *a, **k: calls.append(a))
    assert W.weights_file("imagenet", "resnet18", progress=False) == (path, digest) and calls == []  # cached

    path.write_bytes(path.read_bytes()[:-3] + b"xyz")  # corrupted in the cache
    with pytest.raises(CheckpointError, match=f"{path}: sha256 .* does not start with {digest[:8]}.*delete it"):
        W.weights_file("imagenet", "resnet18", progress=False)


def test_a_download_that_does_not_fit_its_hash_is_refused_and_not_kept(tmp_path, torch_home, monkeypatch):
    url, _ = serve(tmp_path, "resnet18", {"a": torch.zeros(1)})
    bad = tmp_path / "resnet18-00000000.pth"
    (tmp_path / url.rsplit("/", 1)[1]).rename(bad)
    monkeypatch.setitem(W.IMAGENET_URLS, "resnet18", bad.as_uri())
    with pytest.raises(CheckpointError, match="not the official one"):
        W.weights_file("imagenet", "resnet18", progress=False)
    assert not list((torch_home / "hub" / "checkpoints").iterdir())


def test_offline_message_names_the_url_and_the_path(tmp_path, torch_home, monkeypatch):
    url = (tmp_path / "missing" / "retinanet_resnet50_fpn_coco-eeacb38b.pth").as_uri()  # unreachable
    monkeypatch.setitem(W.DETECTOR_URLS, "coco", url)
    expected = torch_home / "hub" / "checkpoints" / "retinanet_resnet50_fpn_coco-eeacb38b.pth"
    with pytest.raises(CheckpointError) as err:
        W.weights_file("coco", progress=False)
    assert f"cannot download the coco weights from {url}" in str(err.value)
    assert f"put it at {expected}" in str(err.value) and "run the same command again" in str(err.value)


@pytest.mark.parametrize("content, says", [(b"", "empty file, not a checkpoint"),
                                           (b"hello, not weights\n", "not a checkpoint: not a PyTorch file"),
                                           ("object", "not a checkpoint: it holds Python objects other than tensors and plain "
                                                      "types (torchvision.ops.misc.FrozenBatchNorm2d), not loaded"),
                                           ("pickle", "not a checkpoint: a pickle that is not PyTorch weights (a plain")])
def test_a_file_that_is_not_weights_says_so(tmp_path, content, says, recwarn):
    import pickle
    path = tmp_path / "w.pth"
    if content == "object":
        torch.save({"x": FrozenBatchNorm2d(2).__class__}, path)  # a class: refused by weights_only
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))  # torch warned "Detected pickle protocol 4"
    else:
        path.write_bytes(content)
    model = build_model("resnet18_fpn", num_classes=3, **TINY)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    text = str(err.value)
    assert text.startswith(str(path)) and says in text and "neither our checkpoint nor a torchvision state_dict" in text
    assert "weights_only" not in text and "EOFError" not in text and "(101)" not in text
    with pytest.raises(CheckpointError, match="weights: a file path or a state_dict, not a NoneType"):
        load_weights(model, None)  # a bare TypeError before


def test_a_checkpoint_whose_bytes_were_altered_is_refused_not_loaded_as_nan_weights(tmp_path):
    """torch.load does not check the zip's CRC-32s: 0xff bytes in a tensor loaded as NaN weights, and
    a resumed run then stopped with "the run diverged" (a QA pass: 4 KB overwritten in last.pt)."""
    model = build_model("resnet18_fpn", num_classes=3, **TINY)
    save_checkpoint({"model": model.state_dict(), "config": {"model": model.config.__dict__}}, tmp_path / "ck.pt")
    data = bytearray((tmp_path / "ck.pt").read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = b"\xff" * 4096  # inside the tensors' bytes, the zip layout intact
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad\.pt: corrupt: the bytes of .*/data/\d+ differ from the checksum"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_weights(build_model("resnet18_fpn", num_classes=3, **TINY), tmp_path / "bad.pt")
    load_model(tmp_path / "ck.pt")  # the file as written passes


def test_eval_of_our_checkpoint_keeps_its_eps_and_a_torchvision_file_gets_eps_0(tmp_path, torch_home, monkeypatch):
    model = build_model("resnet50_fpn", num_classes=3, norm="frozen_bn", **TINY)
    assert model.config.frozen_bn_eps == 1e-5 and model.backbone.body.bn1.eps == 1e-5
    config = {"model": model.config.__dict__, "data": {}, "train": {"weights": "none", "backbone_weights": "imagenet"}}
    save_checkpoint({"model": model.state_dict(), "config": config, "class_map": {"a": 1, "b": 2}}, tmp_path / "ours.pt")
    ours, _ = load_model(tmp_path / "ours.pt")
    assert {m.eps for m in ours.modules() if isinstance(m, FrozenBatchNorm2d)} == {1e-5}

    # our checkpoints before frozen_bn_eps was recorded: 0 only if it started from a weights file
    old = {"model": {k: v for k, v in model.config.__dict__.items() if k != "frozen_bn_eps"}, "train": {"weights": "tv.pth"}}
    assert model_config_of({"config": old}).frozen_bn_eps == 0.0
    assert model_config_of({"config": {**old, "train": {}}}).frozen_bn_eps == 1e-5

    full = build_model("resnet50_fpn", num_classes=91)  # the official v1 file's keys and shapes
    url, _ = serve(tmp_path, "retinanet_resnet50_fpn_coco", full.state_dict())
    monkeypatch.setitem(W.DETECTOR_URLS, "coco", url)
    coco, class_map = load_model("coco")
    assert class_map is None and coco.config.num_classes == 91 and coco.config.frozen_bn_eps == 0.0
    assert {m.eps for m in coco.modules() if isinstance(m, FrozenBatchNorm2d)} == {0.0}
    assert (torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]).is_file()


def test_a_run_folder_given_as_weights_names_its_checkpoint(tmp_path):
    from retinanet.files import read_file

    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="run: a folder, not a checkpoint file$"):
        read_file(tmp_path / "run")
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"a folder, not a checkpoint file; give the file, e.g. {tmp_path / 'run' / 'best.pt'}"):
        read_file(tmp_path / "run")


def test_an_onnx_file_and_a_misspelt_weights_name_are_named_as_such(tmp_path, capsys):
    """``--weights model.onnx`` (the export's output) said "not a PyTorch file at all"; ``Detector.load("cocoo")``
    and ``eval/predict/export --weights cocoo`` said "cocoo: no such file", where ``train`` named the names."""
    from retinanet import Detector
    from retinanet.cli import main
    from retinanet.files import read_file

    onnx_bytes = b"\x08\x0a\x12\x07pytorch"  # how a ModelProto starts: ir_version, producer_name
    for name in ("model.onnx", "renamed.pt"):
        (tmp_path / name).write_bytes(onnx_bytes)
        with pytest.raises(CheckpointError, match=f"{name}: an ONNX model .*run it with onnxruntime.*the .pt checkpoint"):
            read_file(tmp_path / name)
    with pytest.raises(CheckpointError, match="model.onnx: an ONNX model"):
        Detector.load(tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match=r"^cocoo: no such file, nor a name of official weights \(coco, coco-v2\)$"):
        Detector.load("cocoo")
    assert main(["export", "--weights", "cocoo", "--out", str(tmp_path / "m.onnx")]) == 2
    assert main(["eval", "--weights", "cocoo", "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.count("cocoo: no such file, nor a name of official weights (coco, coco-v2)") == 2
    with pytest.raises(CheckpointError, match="imagenet for --backbone-weights"):  # train's names, as before
        W.weights_file("cocoo")


def test_a_read_handed_on_is_taken_once_and_only_for_the_file_as_it_was_read(tmp_path):
    """``ReadOnce``: what eval and train --resume read for the configs is the content their weights
    load from, but never a stale one: another file, a file rewritten since, a second take read again."""
    import os

    from retinanet.files import ReadOnce

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"v": 1}, a)
    torch.save({"v": 2}, b)
    once = ReadOnce()
    assert once.read(a) == {"v": 1}
    assert once.take(os.path.relpath(a)) == {"v": 1}  # the same file, however it is named
    assert once.take(a) is None  # given up: no reference kept for the rest of a run
    once.read(a)
    assert once.take(b) is None and once.take(a) is None  # another file: and the read is dropped
    once.read(a)
    torch.save({"v": 3}, tmp_path / "new.pt")
    os.replace(tmp_path / "new.pt", a)  # a run writing its last.pt meanwhile
    assert once.take(a) is None


def test_an_unwritable_weights_cache_names_the_folder_and_torch_home(tmp_path, monkeypatch):
    """A read-only home: TORCH_HOME's folder cannot be made (here under a regular file, which fails even for
    root) or written (the download's temporary file): one message naming the folder and TORCH_HOME."""
    url, _ = serve(tmp_path, "resnet18", {"conv1.weight": torch.ones(2)})
    monkeypatch.setitem(W.IMAGENET_URLS, "resnet18", url)
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "afile" / "torch"))
    folder = tmp_path / "afile" / "torch" / "hub" / "checkpoints"
    with pytest.raises(CheckpointError) as err:
        W.weights_file("imagenet", "resnet18", progress=False)
    assert str(err.value) == (f"{folder}: cannot store the ImageNet resnet18 weights there (Not a directory); "
                              "set TORCH_HOME to a writable folder (they go to $TORCH_HOME/hub/checkpoints, by "
                              "default ~/.cache/torch/hub/checkpoints)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the folder is there, writing into it fails

    def refused(url, dst, **kwargs):
        raise PermissionError(13, "Permission denied", dst + ".partial")

    monkeypatch.setattr(W.torch.hub, "download_url_to_file", refused)
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'torch' / 'hub' / 'checkpoints'}: cannot store the "
                                              r"ImageNet resnet18 weights there \(Permission denied\); set TORCH_HOME"):
        W.weights_file("imagenet", "resnet18", progress=False)


def reference_checkpoint(path, state: dict, with_args: bool) -> None:
    """Save ``state`` as torchvision's detection reference scripts do (references/detection/train.py):
    ``{"model", "optimizer", "lr_scheduler", "args" (an argparse.Namespace), "epoch"}``."""
    import argparse

    ck = {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
          "lr_scheduler": {"milestones": {16: 1, 22: 1}, "last_epoch": 8}, "epoch": 7}
    if with_args:  # weights_only=True refused the whole file for it ("Unsupported global: argparse.Namespace")
        ck["args"] = argparse.Namespace(model="retinanet_resnet50_fpn", lr=0.01, weights=None, data_path="/coco")
    torch.save(ck, path)


@pytest.mark.parametrize("with_args", [False, True], ids=["no-args", "args-namespace"])
def test_a_torchvision_reference_script_checkpoint_loads_its_model_entry_and_says_so(tmp_path, with_args):
    """A checkpoint of torchvision's detection reference scripts as ``--weights``, ``load_weights``,
    ``load_torchvision_weights``, ``Detector.load`` was refused with "no '...cls_logits.weight'" (and,
    holding its ``args``, as a pickle of objects). Its ``model`` entry loads, with weights_only=True,
    and a warning names the entry and what is not used."""
    from retinanet import Detector
    from retinanet.engine.runtime.checkpoint import load_weights_noted, stored_config

    src = build_model("resnet18_fpn", num_classes=3, **TINY)
    path = tmp_path / "model_7.pth"
    reference_checkpoint(path, src.state_dict(), with_args)
    unused = "optimizer, lr_scheduler, epoch, args" if with_args else "optimizer, lr_scheduler, epoch"
    says = (f"{path}: a checkpoint of torchvision's detection reference scripts, saved after epoch 7: its 'model' entry "
            f"loaded; {unused} not used")
    for load in (load_weights, W.load_torchvision_weights):
        dst = build_model("resnet18_fpn", num_classes=3, **TINY)
        with pytest.warns(UserWarning) as caught:
            assert load(dst, path) == []
        assert [str(w.message) for w in caught] == [says]
        assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    skipped, note = load_weights_noted(build_model("resnet18_fpn", num_classes=4, **TINY), path)  # train's log line
    assert note == says and skipped == list(W.CLS_KEYS)
    assert stored_config(path) is None  # eval/export read it for configs first: none, as a torchvision file

    full = build_model("resnet50_fpn", num_classes=5)  # a torchvision-layout RetinaNet fine-tuned for 4 classes
    reference_checkpoint(tmp_path / "full.pth", full.state_dict(), with_args)
    with pytest.warns(UserWarning, match="full.pth: a checkpoint of torchvision's detection reference scripts"):
        detector = Detector.load(tmp_path / "full.pth", min_size=64, max_size=64)
    assert detector.model.config.num_classes == 5 and list(detector.class_names) == [1, 2, 3, 4]
    assert torch.equal(detector.model.state_dict()["head.classification_head.cls_logits.bias"],
                       full.state_dict()["head.classification_head.cls_logits.bias"])

    reference_checkpoint(tmp_path / "cls.pth", {"conv1.weight": torch.ones(2)}, with_args)  # not a RetinaNet inside
    with pytest.raises(CheckpointError, match=r"cls.pth's 'model' entry: not a torchvision RetinaNet state_dict "
                                              r"\(no 'head.classification_head.cls_logits.weight'\)"):
        load_model(tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match=r"cls.pth's 'model' entry: does not fit the model \(missing keys"):
        load_weights(build_model("resnet18_fpn", num_classes=3, **TINY), tmp_path / "cls.pth")


def test_a_file_holding_other_objects_names_their_types_and_is_not_loaded(tmp_path):
    """weights_only=True refuses any type but tensors, plain types and ``files.SAFE_GLOBALS``; the
    message named no type ("a pickle that is not PyTorch weights"): it names them now."""
    import argparse
    import fractions

    from retinanet.files import read_file

    torch.save({"model": {}, "args": argparse.Namespace(a=1), "x": fractions.Fraction(1, 3)}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"w.pth: not a checkpoint: it holds Python objects other than tensors and "
                                              r"plain types \(fractions.Fraction\), not loaded: unpickling them could run"):
        read_file(tmp_path / "w.pth")
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # allowed for our reads only


def test_a_torch_without_safe_globals_still_reads_plain_checkpoints(tmp_path, monkeypatch):
    """``torch.serialization.safe_globals`` came with torch 2.5 and the package asks for torch>=2.4:
    every checkpoint read raised AttributeError there."""
    import torch

    from retinanet.files import read_file

    path = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2)}, path)
    monkeypatch.delattr(torch.serialization, "safe_globals")
    assert read_file(path)["w"].tolist() == [1.0, 1.0]
