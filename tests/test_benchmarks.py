"""The benchmark scripts run end to end at toy sizes and print what BENCHMARKS.md quotes."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("layout", [[], ["--ours-channels-last"]])
def test_bench_model_prints_both_models_and_the_ratio(layout):
    out = run("bench_model.py", "--arch", "resnet18_fpn", "--batch-size", "1", "--image-size", "64",
              "--iters", "1", "--warmup", "0", "--device", "cpu", *layout)
    for mode in ("train step", "inference "):
        line = next(line for line in out.splitlines() if line.startswith(mode))
        assert "ours" in line and "torchvision" in line and "ratio ours/torchvision" in line


def test_bench_eval_batches_counts_fewer_passes_grouped(tmp_path):
    from retinanet.data import make_synthetic
    synthetic = tmp_path / "syn"
    make_synthetic(synthetic, num_train=2, num_val=2, image_size=64, seed=0)
    out = run("bench_eval_batches.py", "--num-images", "40", "--batch-sizes", "1", "8")
    rows = {int(r.split()[0]): r.split() for r in out.splitlines() if r.strip()[:1].isdigit() and "images" not in r}
    assert rows[1][1:3] == ["40", "40"]  # batch 1: one pass per image either way
    assert int(rows[8][2]) < int(rows[8][1])  # mixed sizes: grouping saves passes
    out = run("bench_eval_batches.py", "--data", str(synthetic), "--batch-sizes", "2", "--time", "--min-size", "64",
              "--max-size", "64", "--repeats", "1")
    assert "s in order" in out and out.strip().splitlines()[-1].split()[0] == "2"


def test_bench_heads_times_loss_and_postprocess():
    out = run("bench_heads.py", "--batch-size", "2", "--image-size", "64", "--num-classes", "5",
              "--iters", "1", "--warmup", "0", "--device", "cpu")
    assert "loss fwd+bwd: ours" in out and "post-process: ours" in out and "speed-up" in out


def test_bench_gpu_cpu_tiny_rows_table_and_json(tmp_path):
    """The GPU benchmark's CPU smoke run: every row prints; the CUDA-only rows report their error
    and the others go on; the JSON holds the same rows."""
    out = run("bench_gpu.py", "--device", "cpu", "--tiny", "--cuda-graphs", "--sync-debug", "2",
              "--json", str(tmp_path / "gpu.json"))
    rows = {r["name"]: r for r in json.loads((tmp_path / "gpu.json").read_text())["rows"]}
    assert list(rows) == ["train fp32", "train bf16", "infer fp32", "infer bf16", "loader 0 workers",
                          "loader 1 workers", "sync debug, ours train bf16", "network eager bf16",
                          "network CUDA graph bf16"]
    for name in ("train fp32", "train bf16", "infer fp32", "infer bf16", "network eager bf16"):
        assert "error" not in rows[name] and rows[name]["ours"] > 0 and rows[name]["torchvision"] > 0, rows[name]
        assert rows[name]["ratio"] == pytest.approx(rows[name]["ours"] / rows[name]["torchvision"])
    assert rows["loader 0 workers"]["images_per_s"] > 0
    assert "needs a CUDA device" in rows["sync debug, ours train bf16"]["error"]
    assert "need a CUDA device" in rows["network CUDA graph bf16"]["error"]
    table = out[out.index("\nrow "):]
    assert all(name in table for name in rows) and "data loading: best loader" in table


def test_bench_gpu_counts_sync_warnings_by_site():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(BENCH))

    def step():
        warnings.warn("called a synchronizing CUDA operation")  # what set_sync_debug_mode("warn") issues
        warnings.warn("called a synchronizing CUDA operation")

    sites = bench_gpu.count_sync_warnings(step, 3, torch.device("cpu"))
    assert sum(sites.values()) == 6 and len(sites) == 2
    assert all("test_benchmarks.py" in s and " in step: warnings.warn(" in s for s in sites)


def test_bench_matcher_same_matches_and_less_memory():
    out = run("bench_matcher.py", "--batch-size", "2", "--boxes", "200", "--ignore", "5", "--height", "64",
              "--width", "96", "--iters", "1", "--chunk-elements", "20000")  # 17 boxes per chunk
    line = next(line for line in out.splitlines() if line.startswith("chunked/today"))
    assert "same matches: True" in line
    assert float(line.split("peak memory ")[1].split("x")[0]) < 1


def test_bench_tiles_recall_and_memory(tmp_path):
    from dataclasses import asdict

    from retinanet.data import make_synthetic
    from retinanet.engine.runtime.checkpoint import save_checkpoint
    from retinanet.model import build_model

    torch.manual_seed(0)
    model = build_model("resnet18_fpn", num_classes=5, min_size=64, max_size=64, norm="bn", fpn_channels=32, head_convs=1)
    ckpt = tmp_path / "tiny.pt"
    classes = {"circle": 1, "square": 2, "star": 3, "triangle": 4}
    save_checkpoint({"model": model.state_dict(), "config": {"model": asdict(model.config)}, "class_map": classes}, ckpt)
    make_synthetic(tmp_path / "big", num_train=1, num_val=1, image_size=160, object_size=(12, 30), objects=8)
    out = run("bench_tiles.py", "recall", "--weights", str(ckpt), "--data", str(tmp_path / "big"), "--whole-size", "96")
    assert "whole: recall@0.5" in out and "tiled: recall@0.5" in out and "tiles of 64 px" in out
    assert "whole@96: recall@0.5" in out and "tiled/whole recall: " in out and "tiled/whole@96 recall: " in out
    out = run("bench_tiles.py", "memory", "--weights", str(ckpt), "--sizes", "128", "256", "--base", "128",
              "--repeats", "2", "--trace", "--mmap-threshold", "0")
    assert "   128 px:     9 tiles" in out and "   256 px:    25 tiles" in out and "peak 256 px / 128 px" in out
    assert "(medians of 2)" in out and "memory: C allocator left at its defaults" in out
    assert "128 px trace (tiles done: peak MiB): 4: " in out


def test_bench_cpu_avx2_mode_counts_flops_and_compares_variants():
    """--avx2 re-runs under the AVX2 environment (the child says so); each variant gets images/s,
    GFLOP/s against the fp32 peak, and its ratio to the first."""
    out = run("bench_cpu.py", "--model", "demo", "--batch-size", "2", "--image-size", "64", "--iters", "1",
              "--warmup", "1", "--variants", "base,nchw", "--avx2", "--ghz", "2.0")
    assert "ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2" in out
    assert "x 8 lanes x 2 flops x 2.000 GHz" in out  # AVX2: 8 fp32 lanes, whatever the CPU has
    for label in ("train step:", "inference:"):
        block = out[out.index(label):].splitlines()
        assert "GFLOP per batch" in block[0] and float(block[0].split()[len(label.split())]) > 0
        assert block[1].split()[0] == "base" and "ratio 1.00x" in block[1] and "% of peak" in block[1]
        assert block[2].split()[0] == "nchw"


def test_bench_cpu_compares_archs_each_with_its_own_flops():
    out = run("bench_cpu.py", "--model", "demo", "--batch-size", "2", "--image-size", "64", "--iters", "1",
              "--warmup", "1", "--mode", "train", "--archs", "resnet18_fpn_v2,regnet_x_400mf_fpn_v2")
    flops = {}
    for arch in ("resnet18_fpn_v2", "regnet_x_400mf_fpn_v2"):
        line = next(x for x in out.splitlines() if x.startswith(f"train step {arch}: "))
        flops[arch] = float(line.split()[3])
    assert flops["regnet_x_400mf_fpn_v2"] < 0.5 * flops["resnet18_fpn_v2"]  # a RegNetX-400MF body: a fraction of the FLOPs
    rows = out[out.index("train step regnet_x_400mf_fpn_v2:"):].splitlines()[1:3]
    assert [r.split()[0] for r in rows] == ["resnet18_fpn_v2", "regnet_x_400mf_fpn_v2"] and "ratio 1.00x" in rows[0]
    refused = subprocess.run([sys.executable, str(BENCH / "bench_cpu.py"), "--archs", "resnet18_fpn_v2", "--variants", "nchw"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "--variants nchw with it would be ignored" in refused.stderr


def test_fp32_peak_is_cores_fma_units_lanes_flops_clock():
    sys.path.insert(0, str(BENCH))
    try:
        from bench_cpu import fp32_peak_gflops
    finally:
        sys.path.remove(str(BENCH))
    assert fp32_peak_gflops(2, 2.2, avx512=False) == pytest.approx(140.8)  # the 2-core AVX2 EPYC
    assert fp32_peak_gflops(2, 2.2, avx512=True) == pytest.approx(281.6)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux's /proc/PID/smaps_rollup")
def test_bench_worker_memory_prints_both_layouts():
    out = run("bench_worker_memory.py", "--num-records", "3000", "--workers", "1")
    assert "RecordList packed them" in out
    rows = {line.split(" worker")[0].strip(): line for line in out.splitlines() if "worker USS growth" in line}
    assert set(rows) == {"list of Record", "RecordList"}


def test_bench_indexing_reads_every_format_whole():
    out = run("bench_indexing.py", "--num-images", "20")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.strip()}
    assert set(rows) == {"yolo", "voc-flat", "voc", "coco"} and all(len(r) == 2 for r in rows.values())


def test_bench_coco_eval_splits_ours_from_pycocotools_and_compares_two_checkouts():
    """Tiny run against this same checkout as ``--code``: both rows, every part, the same numbers."""
    out = run("bench_coco_eval.py", "--num-images", "12", "--dets-per-image", "10", "--classes", "3",
              "--code", str(BENCH.parent), "--check-json")
    assert out.count("compute_metrics ") == 3 and out.count("write_eval_outputs ") == 2
    for part in ("ours before", "COCOeval.evaluate", "COCOeval.accumulate", "ours after"):
        assert out.count(f"    {part} ") == 2, part
    assert "pycocotools' own:" in out and "same numbers and detections.json: True" in out


def test_bench_seams_counts_what_the_merge_leaves_at_tile_seams():
    out = run("bench_seams.py", "--size", "1200", "--small", "400", "--large", "4", "--tiles", "160",
              "--overlaps", "0.2", "--margins", "0", "3", "--cut", "0")
    assert "whole (no tiles, one NMS): small lost " in out
    line = next(x for x in out.splitlines() if x.startswith("whole off cut edge jittered 0-3 px   tile  160 overlap 0.2"))
    cells = line.split("det): ")[1].split(" | ")
    assert [c.split(":")[0] for c in cells] == ["m0/c0.7", "m3/c0.7"]
    dup = [int(c.split(": ")[1].split(" / ")[0]) for c in cells]
    assert dup[0] > dup[1]  # no margin: the pieces of cut objects stay beside their whole boxes


def test_bench_merge_memory_prints_peak_and_the_same_kept_count_for_every_chunk():
    out = run("bench_merge_memory.py", "--size", "600", "--tile", "160", "--per-tile", "30", "--chunks", "4096", "64")
    rows = [line for line in out.splitlines() if "per tile, chunk" in line]
    assert len(rows) == 2 and all("peak +" in r and " MiB, " in r for r in rows)
    kept = {r.rsplit("kept ", 1)[1] for r in rows}
    assert len(kept) == 1 and int(kept.pop()) > 0  # the chunk changes memory, not what is kept
