"""The GPU check's CPU-checkable parts: which carried wheels it installs, what it leaves in $OUT,
its summary, and that the package imports without the optional faster_coco_eval (the lent GPU
image has none). The whole dry run (BENCHMARKS.md "GPU") takes minutes: not a test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.tags import Tag

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_summary  # noqa: E402
from gpu_wheels import pick_wheels  # noqa: E402

CP312 = [Tag("cp312", "cp312", "manylinux_2_28_x86_64"), Tag("cp312", "abi3", "manylinux_2_28_x86_64"),
         Tag("cp312", "abi3", "manylinux_2_17_x86_64"), Tag("cp311", "abi3", "manylinux_2_17_x86_64"),
         Tag("py3", "none", "any")]


def test_pick_wheels_one_per_package_for_this_python():
    names = ["defusedxml-0.7.1-py2.py3-none-any.whl",
             "faster_coco_eval-1.8.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
             "faster_coco_eval-1.8.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
             "pycocotools-2.0.11-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
             "pycocotools-2.0.11-cp312-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
             "pycocotools-2.0.7-cp312-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
             "README.txt.whl"]
    chosen, notes = pick_wheels([Path(n) for n in names], CP312)
    assert [p.name for p in chosen] == [names[0], names[1], names[4]]
    assert len(notes) == 4 and any("cp311-cp311" in n and "not for this interpreter" in n for n in notes)
    assert any(n.startswith("README.txt.whl: not a wheel name") for n in notes)


def test_pick_wheels_nothing_fits():
    chosen, notes = pick_wheels([Path("x-1.0-cp310-cp310-win_amd64.whl")], CP312)
    assert chosen == [] and "not for this interpreter" in notes[0]


def test_gpu_check_writes_at_most_8_plain_files_in_out():
    """At most 8 files come back from the GPU machine, at most 2 folders down: every path the
    script writes under $OUT is a plain name, and there are at most 8 of them."""
    script = (BENCH / "gpu_check.sh").read_text()
    names = set(re.findall(r'\$OUT/([^"\s)]+)', script))
    assert names, "no $OUT paths found: the pattern no longer matches the script"
    assert all("/" not in n and "$" not in n for n in names), names
    # the Python steps write only the files named on their command lines (gpu_cli.py's scratch
    # goes to --work, outside $OUT), and gpu_summary.py its two
    written = names | {"summary.txt", "summary.json"}
    assert len(written) <= 8, written
    assert re.search(r'gpu_cli\.py .*--work "\$WORK/cli" --json "\$OUT/cli\.json"', script, re.S)


def test_gpu_check_setup_and_versions_alone(tmp_path):
    """The script itself, setup and versions stages only (GPU_CHECK_STAGES=""), this interpreter,
    no wheels: ok, and only gpu_check.log + summary.txt + summary.json in $OUT."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_ALLOW_CPU": "1", "GPU_CHECK_PYTHON": sys.executable,
           "GPU_CHECK_SYSTEM_PYTHON": sys.executable, "GPU_CHECK_WHEELS": str(tmp_path / "no_wheels"),
           "GPU_CHECK_STAGES": "", "PIP_NO_INDEX": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "summary.json", "summary.txt"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and [s["stage"] for s in summary["stages"]] == ["setup", "versions"]
    text = (out / "summary.txt").read_text()
    assert text.startswith("GPU check: all stages ok") and "CUDA tests: no results" in text
    assert "imported retinanet" in (out / "gpu_check.log").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("gpu_check.")]  # scratch removed


def test_summary_puts_the_numbers_first(tmp_path):
    (tmp_path / "pytest_cuda.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'
        '<testcase classname="tests.cuda.test_cuda" name="test_a"/><testcase classname="tests.cuda.test_cuda" name="test_b">'
        '<failure message="x"/></testcase><testcase classname="tests.cuda.test_cuda" name="test_c"/></testsuite></testsuites>')
    rows = [{"name": "train fp32", "kind": "train", "ours": 40.0, "torchvision": 30.0, "ratio": 4 / 3},
            {"name": "train bf16", "kind": "train", "ours": 90.0, "torchvision": 45.0, "ratio": 2.0,
             "ours_peak_gib": 10.5, "torchvision_peak_gib": 14.0},
            {"name": "sync debug, ours train bf16", "kind": "sync", "steps": 20, "syncs": 0, "syncs_per_step": 0.0,
             "sites": []},
            {"name": "train bf16 compiled", "kind": "train", "error": "skipped: time budget of 200 s spent (201 s)"}]
    (tmp_path / "bench_gpu.json").write_text(json.dumps({"machine": "m", "device": "cuda", "rows": rows,
                                                          "config": {"arch": "resnet50_fpn", "batch_size": 8,
                                                                     "height": 800, "width": 1216}}))
    (tmp_path / "cli.json").write_text(json.dumps({"config": {"arch": "resnet50_fpn", "size": 512, "batch_size": 16,
                                                              "workers": 14},
                                                   "train": {"rc": 0, "steady_images_per_s": 200.0, "images_per_s": 180.0,
                                                             "seconds": 61.0, "epochs": [{}, {}]},
                                                   "loader_kept_up": "yes", "eval": {"rc": 0, "seconds": 9.0},
                                                   "predict": {"rc": 0, "seconds": 8.0, "images": 104}}))
    stages = tmp_path / "stages.tsv"
    stages.write_text("setup\tok\t3\tpython3\ncuda-tests\tFAILED (rc 1)\t80\tdeadline 130s\n")
    assert gpu_summary.main([str(tmp_path), str(stages), "300", "345"]) == 0
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert lines[0] == "GPU check: FAILED: cuda-tests; 2 stages, 300 s of the 345 s budget"
    assert lines[1] == "CUDA tests: 2 passed, 1 failed, 0 errors, 0 skipped (test_cuda::test_b)"
    assert lines[3].split()[:2] == ["train", "bf16"] and "2.00x" in lines[3] and "10.50" in lines[3]
    assert "train bf16 compiled" in lines[4] and "ERROR skipped" in lines[4]
    head = "\n".join(lines[:12])
    assert "0.0 syncs per step" in head and "200.0 images/s steady" in head and "kept the GPU busy: yes" in head
    assert not json.loads((tmp_path / "summary.json").read_text())["ok"]


def test_package_imports_without_faster_coco_eval():
    """The GPU image has no faster_coco_eval: ``import retinanet`` and pycocotools evaluation work,
    and asking for that backend says how to install it."""
    code = """
import sys
sys.modules["faster_coco_eval"] = None  # import fails as if not installed
import numpy as np
import retinanet, retinanet.cli
from retinanet.engine.evaluate.coco import evaluate_coco
from retinanet.errors import RetinaNetError
gt = [{"image_id": 1, "boxes": np.array([[0, 0, 10, 10.0]]), "labels": np.array([1]), "height": 20, "width": 20}]
dets = [{"image_id": 1, "boxes": np.array([[0, 0, 10, 10.0]]), "scores": np.array([0.9]), "labels": np.array([1])}]
assert abs(evaluate_coco(gt, dets, [1]).metrics["AP"] - 1) < 1e-9  # pycocotools: 1 - 2e-16
try:
    evaluate_coco(gt, dets, [1], backend="faster_coco_eval")
except RetinaNetError as err:
    print(err)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'retinanet[fast-eval]'" in proc.stdout


@pytest.mark.parametrize("version", [None, "3.11"])
def test_make_gpu_wheels_downloads_for_the_asked_python(version):
    """``make gpu-wheels``: CPython 3.12 (the GPU image's) by default, another with GPU_PY=; the
    three packages the image lacks, manylinux x86_64 binaries, into .whl/ (``make -n``: nothing runs)."""
    cmd = ["make", "-n", "gpu-wheels"] + ([f"GPU_PY={version}"] if version else [])
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"--python-version {version or '3.12'} " in out
    assert "--only-binary=:all:" in out and "--platform manylinux_2_28_x86_64" in out and "-d .whl" in out
    assert out.split("-d .whl", 1)[1].split()[:3] == ["defusedxml", "pycocotools", "faster-coco-eval"]
