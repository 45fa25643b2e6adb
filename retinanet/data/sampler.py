"""Batch samplers: aspect-ratio grouped, (seed, epoch)-deterministic, distributed-aware.

``GroupedBatchSampler`` shuffles with ``torch.Generator().manual_seed(seed + epoch)`` (call
``set_epoch`` each epoch; ``set_epoch(e, start=k)`` skips the epoch's first k batches), gives each rank its shard (the list padded by repetition to a multiple
of the world size, as ``DistributedSampler`` does), and forms batches from images of one aspect
group (width/height < 1 vs >= 1, as torchvision's references) so padding to a batch shape wastes
little. Evaluation (``shuffle=False``): rank r takes items r, r+W, r+2W, ... with no padding, so
no image is evaluated twice across ranks, and batches them group by group (``groups`` there: one
per padded input size, ``build.eval_groups``): the model runs a batch of mixed padded sizes as one
pass per size, so a sorted evaluation runs as few passes as it can.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def aspect_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """Group id per image: 0 for portrait (w/h < 1), 1 for landscape or square."""
    return [int(a >= 1.0) for a in aspect_ratios]


class GroupedBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices.

    Args:
        groups: group id per dataset item (training: ``aspect_groups``; evaluation:
            ``build.eval_groups``); all zeros = no grouping.
        batch_size: items per batch (per process).
        shuffle: training order (seed, epoch)-deterministic; False = evaluation: sorted by group,
            in dataset order within a group.
        seed: shuffling seed.
        rank, world_size: this process's shard (defaults from ``torch.distributed``).
        drop_last: drop an incomplete last batch (training only).
        keys: batches hold ``(index, seed, epoch)`` keys instead of indices: the dataset draws item
            ``index``'s augmentation from (seed, epoch, index) alone (``DetectionDataset``), so the
            epoch reaches loader workers that live across epochs (``persistent_workers``).
    """

    def __init__(self, groups: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, drop_last: bool = False, keys: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        r, w = dist_info()
        self.groups = list(groups)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        self.drop_last = drop_last
        self.keys = keys
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make the next iteration's order a function of (seed, epoch), beginning at batch
        ``start`` (0-based): the batches before it are skipped as index lists, never loaded (a run
        resumed mid-epoch). ``len`` stays the whole epoch's batch count."""
        self.epoch = int(epoch)
        self.start = int(start)

    def shard(self) -> list[int]:
        """This rank's dataset indices, in order of use."""
        n = len(self.groups)
        if not self.shuffle:
            return list(range(self.rank, n, self.world_size))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        if self.world_size > 1 and n:
            total = -(-n // self.world_size) * self.world_size
            order = (order * (total // n + 1))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int, int]]]:
        batches = itertools.islice(self.batches(), self.start, None)
        if not self.keys:
            return batches
        seed, epoch = self.seed, self.epoch  # this iteration's, whatever set_epoch does meanwhile
        return ([(i, seed, epoch) for i in batch] for batch in batches)

    def batches(self) -> Iterator[list[int]]:
        """Every batch of the epoch, from the first."""
        if not self.shuffle:  # evaluation: the shard sorted by group (stable), in consecutive batches
            order = sorted(self.shard(), key=self.groups.__getitem__)
            for i in range(0, len(order), self.batch_size):
                yield order[i : i + self.batch_size]
            return
        buckets: dict[int, list[int]] = {}
        leftovers: list[int] = []
        for idx in self.shard():
            bucket = buckets.setdefault(self.groups[idx], [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()
        for g in sorted(buckets):  # mixed-group remainder, in order
            leftovers += buckets[g]
        for i in range(0, len(leftovers), self.batch_size):
            batch = leftovers[i : i + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        if not self.shuffle:
            return -(-len(self.shard()) // self.batch_size)
        counts: dict[int, int] = {}
        for idx in self.shard():
            counts[self.groups[idx]] = counts.get(self.groups[idx], 0) + 1
        full = sum(c // self.batch_size for c in counts.values())
        rest = sum(c % self.batch_size for c in counts.values())
        return full + rest // self.batch_size + (0 if self.drop_last or rest % self.batch_size == 0 else 1)
