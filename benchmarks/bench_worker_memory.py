"""Memory each loader worker copies as it reads a split's records: a list of ``Record`` objects
against ``RecordList`` (one packed buffer, what ``DetectionDataset`` holds).

Forked workers share the parent's memory until a page is written; touching a Python object writes
its reference count (and the garbage collector walks every tracked object), so a worker reading a
list of records copies it page by page. The workers share one shuffled pass over every record (as
training does; each reads its batches, about 1/W of the records) and do nothing else; the growth of its unique memory (USS, from
``/proc/PID/smaps_rollup``, Linux) is what that reading copied.

    python benchmarks/bench_worker_memory.py --num-records 200000 --workers 2
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np
from torch.utils.data import DataLoader, Dataset

from retinanet.data.records import Record, RecordList


def uss_mb(pid: int) -> float:
    """Unique memory of process ``pid``, MiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, *rest = line.split()
            if key.endswith(":") and rest and rest[0].isdigit():
                fields[key] = int(rest[0]) / 1024
    return fields["Private_Dirty:"] + fields["Private_Clean:"]


def make_records(n: int) -> list[Record]:
    """``n`` VOC-like records: 3 objects, a 12-digit file name and its XML."""
    rng = np.random.default_rng(0)
    return [Record(file=f"/data/VOCdevkit/VOC2012/JPEGImages/{i:012d}.jpg",
                   boxes=rng.random((3, 4), dtype=np.float32) * 100, labels=np.array([1, 2, 3], np.int64),
                   ignore=np.zeros(3, bool), image_id=i, size=(480, 640),
                   source=f"/data/VOCdevkit/VOC2012/Annotations/{i:012d}.xml") for i in range(n)]


class ReadRecord(Dataset):
    def __init__(self, records):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> int:
        r = self.records[i]
        return len(r.file) + int(r.labels.sum())


def worker_growth(records, workers: int, batch_size: int = 256) -> list[float]:
    """USS growth (MiB) of each worker over one shuffled pass; sampled every 20 batches (workers
    exit with the last one)."""
    loader = DataLoader(ReadRecord(records), batch_size=batch_size, num_workers=workers, shuffle=True, collate_fn=len)
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]
    time.sleep(0.3)
    start = {p: uss_mb(p) for p in pids}
    end = dict(start)
    for k, _ in enumerate(it):
        if k % 20 == 0:
            try:
                end = {p: uss_mb(p) for p in pids}
            except FileNotFoundError:  # a worker already ended
                pass
    return [end[p] - start[p] for p in pids]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-records", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    records = make_records(args.num_records)
    t = time.perf_counter()
    packed = RecordList(records)
    pack_s = time.perf_counter() - t
    print(f"{args.num_records} records, {args.workers} worker(s); RecordList packed them in {pack_s:.2f} s "
          f"into {packed._data.nbytes / 2**20:.0f} MiB")
    scans = []
    for held in (records, packed):  # what a full scan (image sizes, the anchor check) costs in the main process
        t = time.perf_counter()
        for r in held:
            r.size, r.boxes
        scans.append(time.perf_counter() - t)
    print(f"a full scan reading every record: list of Record {scans[0]:.2f} s, RecordList {scans[1]:.2f} s")
    for name, held in (("list of Record", records), ("RecordList", packed)):
        gc.collect()
        growth = worker_growth(held, args.workers)
        print(f"{name:15s} worker USS growth (MiB): {' '.join(f'{g:.0f}' for g in growth)}; main USS {uss_mb(os.getpid()):.0f} MiB")


if __name__ == "__main__":
    main()
