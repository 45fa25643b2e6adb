"""Tiled prediction on large images: recall at IoU 0.5 tiled vs whole-image, and peak memory vs image size.

    python benchmarks/bench_tiles.py recall --weights RUN/best.pt --data LARGE_SET
    python benchmarks/bench_tiles.py memory --weights RUN/best.pt --sizes 2000 8000
    python benchmarks/bench_tiles.py merge --base-checkout ../base --detections 10000 40000 80000

``recall``: every image of the dataset's val split (VOC layout, e.g. ``retinanet make-synthetic
--large``), predicted whole (resized to the model's input size, ``Detector.predict(tile=False)``; with
``--whole-size PX`` also resized to PX) and tiled (``Detector.predict(tile=...)``, native
resolution), all detections scoring above
``--score-thresh``; a ground-truth box is found when a detection of its class, not already used
by a better-scoring match, overlaps it with IoU >= 0.5 (greedy by score, one detection per box).

``memory``: one image per size: a ``make-synthetic --large`` style image (12..48 px objects) of
``--base`` px, repeated to fill ``SIZE x SIZE`` (same content density at every size). Each size
runs in a fresh child process, which decodes nothing (the image is built as a uint8 tensor), resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``) and reads ``VmHWM`` after
``Detector.detect_tiled``: the peak resident memory of the tiled prediction above what the process
held with the model loaded and the image in memory (Linux only), after a warm-up on full batches
of tiles. The children fix glibc's mmap threshold as ``predict/eval --tile`` do
(``--mmap-threshold 0``: glibc's moving default, under which the peak creeps up with the tiles and
scatters from run to run); each size runs ``--repeats`` times, the sizes interleaved, and the
medians are compared.

``merge``: ``merge_tiles`` alone (no model) on the detections of a ``--merge-size`` px image in
``--tile`` px tiles at ``--overlap`` (default 12,000 px, 160 px, 0.2: 8,836 tiles): objects of 12..48
px, ``--detections`` / 1.5 of them (about 1.4x as many detections come out: the count is printed), each tile seeing the visible part of each
(0-3 px jitter, scores in steps of 0.01) through its own class-wise NMS in tile pixels, shifted to
image pixels as ``detect_tiled`` does, fragments marked; ``--whole N`` adds N whole-image-pass boxes.
With ``--base-checkout CHECKOUT`` its ``retinanet/model/tiling.py`` is timed on the same inputs, alternating
with this checkout's (``--repeats`` each, medians), and the kept indices compared (by score, equal
scores by index).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinanet.data.synthetic import render_large_image  # noqa: E402
from retinanet.data.voc import parse_voc_xml  # noqa: E402
from retinanet.engine.infer.detector import Detector, TileOptions  # noqa: E402
from retinanet.engine.runtime.allocator import MMAP_THRESHOLD, fix_mmap_threshold  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["recall", "memory", "merge"])
    p.add_argument("--weights", help="recall, memory: the checkpoint")
    p.add_argument("--data", help="recall: dataset root with VOCdevkit/VOC2012 (make-synthetic layout)")
    p.add_argument("--split", default="val")
    p.add_argument("--tile", type=int, help="tile side [the model's input size]")
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--tile-batch", type=int, default=4)
    p.add_argument("--score-thresh", type=float, default=0.05)
    p.add_argument("--whole-size", type=int, nargs="*", default=[], metavar="PX",
                   help="recall: also predict whole images resized to these input sizes (short side; long side "
                   "capped at the same), e.g. 800 as most toolkits would")
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000], help="memory: image sides")
    p.add_argument("--base", type=int, default=2000, help="memory: side of the rendered image that is repeated")
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int, default=3, help="memory: child runs per size (peak RSS varies run to run)")
    p.add_argument("--trace", action="store_true", help="memory: print the peak after each batch of tiles")
    p.add_argument("--mmap-threshold", type=int, default=MMAP_THRESHOLD, metavar="BYTES",
                   help="memory: glibc's mmap threshold in the children, fixed as predict/eval --tile fix it "
                   "(fix_mmap_threshold) [32 MiB]; 0: glibc's moving default")
    p.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--base-checkout", help="merge: another checkout whose merge_tiles is timed beside this one's")
    p.add_argument("--detections", type=int, nargs="+", default=[10_000, 40_000, 80_000], help="merge: about how many")
    p.add_argument("--merge-size", type=int, default=12_000, help="merge: image side [12000]")
    p.add_argument("--whole", type=int, default=0, help="merge: whole-image-pass boxes [0]")
    return p.parse_args(argv)


def found(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, det) -> int:
    """Ground-truth boxes matched one-to-one by a same-class detection with IoU >= 0.5 (greedy by score)."""
    if not len(gt_boxes) or not len(det):
        return 0
    iou = box_iou(det.boxes, gt_boxes) * (det.labels[:, None] == gt_labels[None])  # [D, G], detections by score
    used = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for row in iou:
        row = row.masked_fill(used, 0)
        j = int(row.argmax())
        if row[j] >= 0.5:
            used[j] = True
    return int(used.sum())


def recall(args) -> None:
    det = Detector.load(args.weights, amp="off")
    tile = det.tile_options(TileOptions(tile=args.tile, overlap=args.overlap, batch_size=args.tile_batch))
    voc = Path(args.data) / "VOCdevkit" / "VOC2012"
    names = {n: i for i, n in det.class_names.items()}
    stems = (voc / "ImageSets" / "Main" / f"{args.split}.txt").read_text().split()
    # whole images: tile=False (a --crop model tiles by default, as trained)
    passes = [("whole", det, {"tile": False}), ("tiled", det, {"tile": tile})]
    passes += [(f"whole@{px}", Detector.load(args.weights, amp="off", min_size=px, max_size=px), {"tile": False})
               for px in args.whole_size]
    totals = {"objects": 0} | {f"{kind}{k}": 0 for kind, _, _ in passes for k in ("", "_dets")} \
        | {f"{kind}_s": 0.0 for kind, _, _ in passes}
    for stem in stems:
        ann = parse_voc_xml(voc / "Annotations" / f"{stem}.xml")
        gt = torch.from_numpy(ann.boxes.astype(np.float32)).reshape(-1, 4)
        gt[:, :2] -= 1  # VOC 1-based xmin/ymin -> continuous pixels (our reader's convention)
        labels = torch.tensor([names[n] for n in ann.names], dtype=torch.int64)
        image = det.read_image(voc / "JPEGImages" / f"{stem}.jpg")
        for kind, model, kw in passes:
            t0 = time.perf_counter()
            (r,) = model.predict(image, score_thresh=args.score_thresh, max_dets=100_000, **kw)
            totals[f"{kind}_s"] += time.perf_counter() - t0
            totals[kind] += found(gt, labels, r)
            totals[f"{kind}_dets"] += len(r)
        totals["objects"] += len(gt)
    n = totals["objects"]
    print(f"{len(stems)} images, {n} objects; model input {det.model.config.min_size} px; {tile.describe()}")
    for kind, _, _ in passes:
        print(f"{kind}: recall@0.5 {totals[kind] / n:.3f} ({totals[kind]}/{n}), {totals[f'{kind}_dets']} detections "
              f">= {args.score_thresh}, {totals[f'{kind}_s']:.1f} s")
    for kind, _, _ in passes[:1] + passes[2:]:
        ratio = f"{totals['tiled'] / totals[kind]:.2f}x" if totals[kind] else f"no ratio: {kind} found none, tiled {totals['tiled']}"
        print(f"tiled/{kind} recall: {ratio}")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(args) -> None:
    allocator = fix_mmap_threshold(args.mmap_threshold)  # first, as the CLI does before its work
    if args.threads:
        torch.set_num_threads(args.threads)
    det = Detector.load(args.weights, amp="off")
    tile = det.tile_options(TileOptions(tile=args.tile, overlap=args.overlap, batch_size=args.tile_batch))
    img, _ = render_large_image(np.random.default_rng(0), args.base, (12, 48), max(1, args.base ** 2 * 100 // 3000 ** 2))
    base = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    reps = -(-args.child_size // args.base)
    image = base.repeat(1, reps, reps)[:, :args.child_size, :args.child_size].contiguous()
    det.detect_tiled(image[:, :tile.tile, :tile.tile * tile.batch_size].contiguous(), tile,
                     score_thresh=args.score_thresh)  # warm-up: full batches of tiles
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    tiles, trace = [], []

    def on_tiles(done: int, n: int) -> None:
        tiles.append(n)
        trace.append((done, _status("VmHWM") - before))

    r = det.detect_tiled(image, tile, score_thresh=args.score_thresh, max_dets=1_000_000, on_tiles=on_tiles)
    seconds = time.perf_counter() - t0
    print(json.dumps({"size": args.child_size, "peak": _status("VmHWM") - before, "rss_before": before,
                      "tiles": tiles[-1], "detections": len(r), "seconds": seconds, "trace": trace,
                      "allocator": allocator}))


def memory(args) -> None:
    rows: dict[int, list[dict]] = {size: [] for size in args.sizes}
    for _ in range(args.repeats):  # sizes interleaved: a drift of the machine hits every size alike
        for size in args.sizes:
            cmd = [sys.executable, __file__, "memory", "--weights", args.weights, "--child-size", str(size),
                   "--base", str(args.base), "--overlap", str(args.overlap), "--tile-batch", str(args.tile_batch),
                   "--score-thresh", str(args.score_thresh)]
            cmd += ["--tile", str(args.tile)] if args.tile else []
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--mmap-threshold", str(args.mmap_threshold)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"size {size}: child failed:\n{proc.stderr}")
            rows[size].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if args.trace:
                print(f"{size} px trace (tiles done: peak MiB): "
                      + ", ".join(f"{d}: {p / 2**20:.0f}" for d, p in rows[size][-1]["trace"]), flush=True)
    mib = 2 ** 20
    print(rows[args.sizes[0]][0]["allocator"])
    for size, rs in rows.items():
        peaks = [r["peak"] / mib for r in rs]
        r = rs[0]
        print(f"{size:6d} px: {r['tiles']:5d} tiles, peak {statistics.median(peaks):8.1f} MiB median of "
              f"{' '.join(f'{p:.1f}' for p in peaks)} above {r['rss_before'] / mib:7.1f} MiB (model + image), "
              f"{r['detections']} detections, {statistics.median(x['seconds'] for x in rs):.1f} s")
    first, last = (statistics.median(r["peak"] for r in rows[s]) for s in (args.sizes[0], args.sizes[-1]))
    worst = max(r["peak"] for r in rows[args.sizes[-1]]) / min(r["peak"] for r in rows[args.sizes[0]])
    print(f"peak {args.sizes[-1]} px / {args.sizes[0]} px: {last / first:.3f}x (medians of {args.repeats}); "
          f"largest / smallest single run: {worst:.3f}x")


def merge_inputs(args, detections: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``merge_tiles``'s inputs for about ``detections`` detections (see ``merge`` in the docstring):
    ``bench_seams.py``'s stand-in tiled detector on a scene of small objects."""
    from bench_seams import mark_fragments, random_whole, tiled_detections

    from retinanet.model.tiling import tile_grid

    g = torch.Generator().manual_seed(seed)
    S, tile, classes = args.merge_size, args.tile or 160, 3
    grid = tile_grid((S, S), tile, args.overlap)
    side = 1 + 2 * args.overlap * tile / (tile * (1 - args.overlap))  # tiles that see an object, about
    n = max(1, int(detections / side))
    wh = torch.rand(n, 2, generator=g) * 36 + 12
    xy = torch.rand(n, 2, generator=g) * (S - wh)
    objs = torch.cat([xy, xy + wh], 1)
    label = torch.randint(0, classes, (n,), generator=g)
    boxes, scores, labels, tiles, _, _ = tiled_detections(g, objs, label, grid, min_view=1, strict=True,
                                                          classes=classes)
    if args.whole:
        parts = zip((boxes, scores, labels, tiles), random_whole(g, args.whole, (S, S), classes=classes))
        boxes, scores, labels, tiles = (torch.cat(x) for x in parts)
    return boxes, scores, labels, tiles, mark_fragments(boxes, tiles, grid, (S, S)), grid


def merge(args) -> None:
    import importlib.util
    import platform

    from retinanet.model import tiling

    fns = {"this": tiling.merge_tiles}
    if args.base_checkout:
        spec = importlib.util.spec_from_file_location("base_tiling", Path(args.base_checkout) / "retinanet/model/tiling.py")
        base = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = base  # its dataclasses look their module up
        spec.loader.exec_module(base)
        fns = {"base": base.merge_tiles} | fns
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{cpu}, {torch.get_num_threads()} thread(s); {args.merge_size} px image, tiles of {args.tile or 160} px at "
          f"overlap {args.overlap}, {args.whole} whole-image boxes")
    for detections in args.detections:
        inputs = merge_inputs(args, detections)
        times: dict[str, list[float]] = {name: [] for name in fns}
        kept = {}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                keep = fn(*inputs, 0.5, 10 ** 7)
                times[name].append(time.perf_counter() - t0)
                kept[name] = keep
        scores = inputs[1]
        ordered = {name: k.sort().values[torch.sort(scores[k.sort().values], descending=True, stable=True).indices]
                   for name, k in kept.items()}
        same = "" if len(fns) < 2 else (", same kept boxes and order" if torch.equal(*ordered.values())
                                         else ", KEPT BOXES DIFFER")
        cells = ", ".join(f"{name} {statistics.median(ts):.3f} s" for name, ts in times.items())
        print(f"{len(scores):7d} detections ({int(inputs[4].sum())} fragments, {len(kept['this'])} kept): {cells}"
              f" (medians of {args.repeats}){same}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.mode != "merge" and not args.weights:
        raise SystemExit(f"{args.mode}: --weights is required")
    if args.child_size:
        return memory_child(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"recall": recall, "memory": memory, "merge": merge}[args.mode](args)


if __name__ == "__main__":
    main()
