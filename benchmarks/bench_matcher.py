"""Matching (anchor labelling) on a crowded batch: peak memory and time, whole IoU matrix vs chunks.

    python benchmarks/bench_matcher.py --batch-size 8 --boxes 2000 --height 800 --width 1333

"today" is ``match(*batched_overlaps(...))``, the whole ``[B, M, N]`` IoU matrix at once (what
the loss did before ``match_anchors``; ``match_anchors(chunk_elements=None)`` runs the same code);
"chunked" is ``match_anchors`` with its default ``MATCH_CHUNK_ELEMENTS``.

Anchors: the model's, for the ``--height`` x ``--width`` input padded to a multiple of 32 (as the
model pads it). Boxes: ``--boxes`` per image, seeded, sides 12..64 px anywhere in the image, a
crowded scene; ``--ignore`` of them flagged as ignore regions.

Peak memory: each measurement runs in a fresh child process, which builds its inputs, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``, 5), matches once and reads ``VmHWM`` from
``/proc/self/status``: the peak resident memory of the matching step above what the process held
before it (torch's CPU allocator returns large blocks to the OS, so this is the memory the step
touched). Linux only. Time: the median of ``--iters`` runs in the same child (the first, whose
memory is measured, included), then the median over the children; the rounds alternate today /
chunked. The children print a SHA-256 of the matches, compared here.

"today" is skipped (with its estimated need) when ``36 * B*M*N`` bytes exceed ``MemAvailable``:
at the goal size (B=8, M=2000, 800x1333) it would need about 108 GiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinanet.model.anchors import AnchorCache  # noqa: E402
from retinanet.model.matcher import MATCH_CHUNK_ELEMENTS, batched_overlaps, match, match_anchors, pad_targets  # noqa: E402

BYTES_PER_ELEMENT_TODAY = 36  # batched_overlaps + match peak per B*M*N element, measured by this script


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--boxes", type=int, default=2000, help="boxes per image")
    p.add_argument("--ignore", type=int, default=20, help="of them, ignore regions")
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1333)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="child processes per method, alternating")
    p.add_argument("--threads", type=int, help="torch.set_num_threads in the children")
    p.add_argument("--chunk-elements", type=int, default=MATCH_CHUNK_ELEMENTS,
                   help=f"match_anchors' chunk_elements [{MATCH_CHUNK_ELEMENTS}, its default]")
    p.add_argument("--child", choices=["today", "chunked"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_inputs(args):
    """``(gt [B, M, 4], anchors [N, 4], valid [B, M], ignore [B, M])``, seeded."""
    g = torch.Generator().manual_seed(0)
    H, W = (32 * -(-args.height // 32)), (32 * -(-args.width // 32))
    feat_hws = [(-(-H // 2 ** k), -(-W // 2 ** k)) for k in range(3, 8)]
    anchors = torch.cat(AnchorCache()(feat_hws, (H, W), "cpu"))
    targets = []
    for _ in range(args.batch_size):
        wh = 12 + torch.rand(args.boxes, 2, generator=g) * 52
        xy = torch.rand(args.boxes, 2, generator=g) * (torch.tensor([args.width, args.height]) - wh)
        flags = torch.zeros(args.boxes, dtype=torch.bool)
        flags[: args.ignore] = True
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 5, (args.boxes,), generator=g),
                        "ignore": flags})
    gt, labels, ignore = pad_targets(targets, "cpu")
    return gt, anchors, (labels >= 0) & ~ignore, ignore


def peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    gt, anchors, valid, ignore = make_inputs(args)
    if args.child == "today":
        def run():
            iou, iof = batched_overlaps(gt, anchors, valid, ignore)
            return match(iou, valid, ignore_iof=iof)
    else:
        def run():
            return match_anchors(gt, anchors, valid, ignore, chunk_elements=args.chunk_elements)
    base = current_rss()
    peak_rss_reset()
    t0 = time.perf_counter()
    matches = run()
    first = time.perf_counter() - t0
    peak = peak_rss() - base
    times = [first]
    for _ in range(args.iters - 1):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    digest = hashlib.sha256(matches.numpy().tobytes()).hexdigest()[:16]
    print(json.dumps({"peak": peak, "time": statistics.median(times), "sha": digest, "anchors": anchors.shape[0],
                      "foreground": int((matches >= 0).sum()), "ignored": int((matches == -2).sum())}))


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    from bench_model import load_average, machine

    B, M = args.batch_size, args.boxes
    H, W = (32 * -(-args.height // 32)), (32 * -(-args.width // 32))
    N = sum(-(-H // 2 ** k) * -(-W // 2 ** k) * 9 for k in range(3, 8))
    need = BYTES_PER_ELEMENT_TODAY * B * M * N
    methods = ["chunked"]
    if need < 0.7 * mem_available():
        methods.insert(0, "today")
    else:
        print(f"today: skipped, needs about {need / 2**30:.1f} GiB ({BYTES_PER_ELEMENT_TODAY} B x B*M*N = "
              f"{B}x{M}x{N}), {mem_available() / 2**30:.1f} GiB available")
    print(f"machine: {machine(torch.device('cpu'))}")
    print(f"batch {B}, {M} boxes/image ({args.ignore} ignore regions), input {args.height}x{args.width} "
          f"(padded {H}x{W}), {N} anchors; B*M*N = {B * M * N:,}; chunk_elements {args.chunk_elements:,}")
    print(f"load average before: {load_average()}")
    cmd = [sys.executable, __file__, "--batch-size", str(B), "--boxes", str(M), "--ignore", str(args.ignore),
           "--height", str(args.height), "--width", str(args.width), "--iters", str(args.iters),
           "--chunk-elements", str(args.chunk_elements)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(args.rounds):
        for m in methods if r % 2 == 0 else methods[::-1]:
            proc = subprocess.run([*cmd, "--child", m], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{m}: child failed:\n{proc.stderr}")
            results[m].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = {}
    for m, rs in results.items():
        peak = max(x["peak"] for x in rs)
        t = statistics.median(x["time"] for x in rs)
        summary[m] = (peak, t)
        print(f"{m:8s} peak {peak / 2**20:10.1f} MiB  time {t * 1000:9.1f} ms  matches sha256 {rs[0]['sha']}  "
              f"foreground {rs[0]['foreground']}  ignored {rs[0]['ignored']}")
    if "today" in summary:
        same = len({x["sha"] for rs in results.values() for x in rs}) == 1
        (p0, t0), (p1, t1) = summary["today"], summary["chunked"]
        print(f"chunked/today: peak memory {p1 / p0:.3f}x, time {t1 / t0:.2f}x, same matches: {same}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
