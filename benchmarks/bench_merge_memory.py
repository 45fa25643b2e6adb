"""Peak memory and time of the tile merge (``merge_tiles``) on dense detections, by pair chunk.

    python benchmarks/bench_merge_memory.py --per-tile 100 300 --chunks 4194304 262144 65536

A near-untrained model (or a crowded scene) fills every tile with detections: ``--per-tile`` random
boxes (4-64 px, 3 classes, random scores) in each tile of a ``--size`` px image cut into ``--tile``
px tiles at overlap 0.2, fragments marked as ``detect_tiled`` marks them. Each (per-tile, chunk)
runs in a fresh child process, which sets ``model.tiling.PAIR_CHUNK`` (the pairs the merge's joins
test at once), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``; Linux only) and
prints the peak resident memory of the merge above what it held before, its time and the count of
kept detections (the same for every chunk: the chunk changes memory, not the result).
With ``--base-checkout DIR`` that checkout's merge runs too (its own chunk).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=3600, help="image side [3600]")
    p.add_argument("--tile", type=int, default=160, help="tile side [160]")
    p.add_argument("--per-tile", type=int, nargs="+", default=[100, 300], help="detections per tile [100 300]")
    p.add_argument("--chunks", type=int, nargs="+", default=[1 << 22, 1 << 16], help="PAIR_CHUNK values")
    p.add_argument("--base-checkout", help="another checkout whose merge runs on the same inputs")
    p.add_argument("--child", nargs=3, metavar=("ROOT", "PER_TILE", "CHUNK"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    root, per, chunk = args.child[0], int(args.child[1]), int(args.child[2])
    sys.path.insert(0, root)
    import torch
    from retinanet.model import tiling

    if chunk:  # the joins' default limit is bound when the module is read: set it there too
        tiling.PAIR_CHUNK = chunk
        for fn in ("_chunks", "_join"):
            f = getattr(tiling, fn)
            f.__defaults__ = (*f.__defaults__[:-1], chunk)
    g = torch.Generator().manual_seed(0)
    grid = tiling.tile_grid((args.size, args.size), args.tile, 0.2)
    inner = tiling.inner_edges(grid, (args.size, args.size))
    tiles = torch.arange(len(grid)).repeat_interleave(per)
    w = grid[tiles].float()
    xy = torch.rand(len(tiles), 2, generator=g) * (args.tile - 8)
    wh = torch.rand(len(tiles), 2, generator=g) * 60 + 4
    boxes = torch.cat([xy, (xy + wh).clamp(max=args.tile)], 1) + w[:, :2].repeat(1, 2)
    scores, labels = torch.rand(len(tiles), generator=g), torch.randint(0, 3, (len(tiles),), generator=g)
    frag = tiling.fragments(boxes, grid[tiles], inner[tiles], 3.0)  # the same margin whichever checkout
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    t = time.perf_counter()
    keep = tiling.merge_tiles(boxes, scores, labels, tiles, frag, grid, 0.5, 10 ** 9)
    seconds = time.perf_counter() - t
    print(f"{len(grid)} tiles, {len(boxes)} detections: peak +{_status('VmHWM') - before:.0f} MiB, "
          f"{seconds:.2f} s, kept {len(keep)}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    runs = [(str(ROOT), c, f"chunk {c}") for c in args.chunks]
    if args.base_checkout:
        runs.append((args.base_checkout, 0, f"base {args.base_checkout}"))
    for per in args.per_tile:
        for root, chunk, name in runs:
            cmd = [sys.executable, __file__, "--size", str(args.size), "--tile", str(args.tile),
                   "--child", root, str(per), str(chunk)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
            print(f"{per:>4} per tile, {name:<24} {out}", flush=True)


if __name__ == "__main__":
    main()
