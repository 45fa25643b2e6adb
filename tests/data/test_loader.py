"""Loaders: batches, (seed, epoch) determinism, aspect grouping, distributed shards."""

from __future__ import annotations

import pytest
import numpy as np
import torch

from retinanet.config import DataConfig
from retinanet.data import ClassMap, build_datasets, build_loader
from retinanet.errors import DataError
from retinanet.data.build import eval_groups
from retinanet.data.dataset import DetectionDataset
from retinanet.data.records import Record
from retinanet.data.sampler import GroupedBatchSampler, aspect_groups
from retinanet.data.transforms import ItemTransform
from retinanet.model.transform import padded_size_groups


@pytest.fixture(scope="module")
def datasets(synthetic):
    return build_datasets(DataConfig(root=str(synthetic), photometric=True), min_size=64, max_size=64)


def _epoch(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return [(t["image_id"], t["boxes"], img) for images, targets in loader for img, t in zip(images, targets)]


def test_train_batches_and_determinism(datasets):
    make = lambda: build_loader(datasets.train, batch_size=3, workers=1, train=True, seed=5)  # noqa: E731
    a, b = make(), make()
    first = _epoch(a, 2)
    assert len(first) == 8 and sorted(i for i, _, _ in first) == list(range(8))
    for (ia, ba, xa), (ib, bb, xb) in zip(first, _epoch(b, 2)):
        assert ia == ib and torch.equal(ba, bb) and torch.equal(xa, xb)  # same order, same augmentation
    assert [i for i, _, _ in _epoch(a, 3)] != [i for i, _, _ in first]
    images, targets = next(iter(a))
    assert isinstance(images, list) and images[0].shape == (3, 64, 64) and images[0].dtype == torch.uint8
    assert set(targets[0]) == {"boxes", "labels", "ignore", "image_id", "orig_size", "size", "file"}


def test_augmentation_is_the_same_with_any_number_of_workers_and_leaves_the_global_rng_alone(synthetic):
    data = build_datasets(DataConfig(root=str(synthetic), photometric=True, iou_crop=True, train_sizes=(48, 56, 64)),
                          min_size=64, max_size=64)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    epochs = {w: _epoch(build_loader(data.train, batch_size=3, workers=w, train=True, seed=5), 2) for w in (0, 1, 2)}
    assert torch.equal(torch.get_rng_state(), before)  # workers=0 drew nothing from the global generator
    for w in (1, 2):
        assert len(epochs[w]) == len(epochs[0]) == 8
        for (ia, ba, xa), (ib, bb, xb) in zip(epochs[0], epochs[w]):
            assert ia == ib and torch.equal(ba, bb) and torch.equal(xa, xb), w
    other = {i: (b, x) for i, b, x in _epoch(build_loader(data.train, batch_size=3, workers=0, train=True, seed=5), 3)}
    changed = [i for i, b, x in epochs[0] if x.shape != other[i][1].shape or not torch.equal(x, other[i][1])]
    assert len(changed) >= 6  # another epoch draws anew (8 images: crop, scale, flip, colour)


def test_training_workers_live_across_epochs_and_draw_each_epoch_anew(datasets):
    """Started once (with spawn, as on macOS and Windows, a start costs seconds a worker), the
    workers still draw epoch e's augmentation from (seed, e, index): the batch sampler's keys."""
    kept = build_loader(datasets.train, batch_size=3, workers=1, train=True, seed=5)
    assert kept.persistent_workers and not build_loader(datasets.val, batch_size=3, workers=1, train=False).persistent_workers
    for epoch in (2, 3):
        fresh = _epoch(build_loader(datasets.train, batch_size=3, workers=0, train=True, seed=5), epoch)
        got = _epoch(kept, epoch)
        assert [i for i, _, _ in got] == [i for i, _, _ in fresh]
        assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(got, fresh)), epoch


def test_kept_evaluation_workers_serve_each_pass_whole_after_one_left_part_way(datasets):
    """A training run's val loader keeps its workers (``keep_workers``: with spawn a start costs
    seconds, each epoch); a pass left part way (an evaluation cut short, ``measure_eval``'s one
    batch) leaves batches under way in them, and the next pass still reads each image once, from
    the same processes; ``close`` ends them. ``retinanet eval``'s one pass keeps none."""
    loader = build_loader(datasets.val, batch_size=1, workers=2, train=False, keep_workers=True)
    assert loader.persistent_workers and not build_loader(datasets.val, batch_size=1, workers=2, train=False).persistent_workers
    try:
        next(iter(loader))  # 3 more batches under way
        workers = list(loader._iterator._workers)
        for _ in range(2):
            assert [t["image_id"] for _, targets in loader for t in targets] == [0, 1, 2, 3]
        assert loader._iterator._workers == workers and all(w.is_alive() for w in workers)
    finally:
        loader.close()
    assert len(workers) == 2 and not any(w.is_alive() for w in workers) and loader._iterator is None


def test_eval_loader_is_sequential(datasets):
    loader = build_loader(datasets.val, batch_size=3, workers=0, train=False)
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert ids == list(range(4)) and len(loader) == 2


def test_eval_batches_are_of_one_padded_size():
    """Evaluation batches images of one padded input size together: the model runs a mixed batch as
    one pass per size, so mixed batches would cost passes (VOC's sizes at 800/1333 give several)."""
    import numpy as np
    sizes = [(375, 500), (500, 375), (333, 500), (375, 500), (500, 333), (375, 500), (332, 500), (500, 375), (375, 500)]
    empty = np.zeros((0, 4), np.float32)
    records = [Record(f"missing{i}.jpg", empty, np.zeros(0, np.int64), np.zeros(0, bool), i, hw, "test")
               for i, hw in enumerate(sizes)]
    ds = DetectionDataset(records, ItemTransform(min_size=800, max_size=1333))
    groups = eval_groups(ds)
    assert groups == [0, 1, 2, 0, 3, 0, 2, 1, 0]  # 333 and 332 rows pad alike: (800, 1216)
    batches = list(GroupedBatchSampler(groups, 3, shuffle=False, rank=0, world_size=1))
    assert sorted(i for b in batches for i in b) == list(range(9)) and len(batches) == 3
    fake = [torch.zeros(3, h, w) for h, w in sizes]
    passes = sum(len(padded_size_groups([fake[i] for i in b], 800, 1333)) for b in batches)
    in_order = sum(len(padded_size_groups(fake[i : i + 3], 800, 1333)) for i in range(0, 9, 3))
    assert passes == 5 and in_order == 8  # one pass per size plus one per size boundary, vs 2.7 per batch
    native = DetectionDataset(records, ItemTransform(min_size=800, max_size=1333, resize=False))
    assert eval_groups(native) == [0, 1, 2, 0, 3, 0, 2, 1, 0]  # native tiles: 352 x 512 for 333 and 332


def test_grouped_batches_by_aspect_ratio():
    ratios = [0.5, 1.5, 0.7, 1.0, 2.0, 0.6, 1.2, 0.9, 1.3]
    groups = aspect_groups(ratios)
    sampler = GroupedBatchSampler(groups, 2, shuffle=True, seed=0, rank=0, world_size=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) and sorted(i for b in batches for i in b) == list(range(9))
    mixed = [b for b in batches if len({groups[i] for i in b}) > 1]
    assert len(mixed) <= 1 and all(len(b) == 2 for b in batches[:-1])


def test_distributed_shards():
    groups = [0] * 10
    train = [list(GroupedBatchSampler(groups, 2, shuffle=True, seed=1, rank=r, world_size=3)) for r in range(3)]
    flat = [sorted(i for b in shard for i in b) for shard in train]
    assert all(len(f) == 4 for f in flat) and set().union(*map(set, flat)) == set(range(10))  # padded to 12
    evals = [[i for b in GroupedBatchSampler(groups, 2, shuffle=False, rank=r, world_size=3) for i in b] for r in range(3)]
    assert sorted(i for e in evals for i in e) == list(range(10))  # disjoint, no duplicates
    with pytest.raises(Exception, match="process group"):
        build_loader([], batch_size=1, workers=0, train=True, distributed=True)


def test_build_datasets_reads_with_a_given_class_map(synthetic, datasets):
    """A given ``ClassMap`` (a checkpoint's) sets the ids instead of the discovered ones."""
    shifted = ClassMap({n: i + 10 for n, i in datasets.class_map.to_dict().items()}, source="the test's map")
    ds = build_datasets(DataConfig(root=str(synthetic)), min_size=64, max_size=64, splits=("val",), class_map=shifted)
    assert ds.class_map is shifted
    _, target = ds.val[0]
    _, ref = datasets.val[0]
    assert target["labels"].tolist() == (ref["labels"] + 10).tolist() and len(target["labels"]) > 0
    partial = ClassMap(dict(list(datasets.class_map.to_dict().items())[:1]), source="the test's map")
    with pytest.raises(DataError, match="not in the class map \\(the test's map\\)"):
        build_datasets(DataConfig(root=str(synthetic)), min_size=64, max_size=64, splits=("val",), class_map=partial)


def test_a_datasets_records_are_one_buffer_and_read_back_equal(datasets):
    """Loader workers share one never-written buffer instead of copying a list of objects page by
    page (200k records: about 120 MiB a worker, BENCHMARKS.md "Records in loader workers")."""
    from retinanet.data.records import Record, RecordList
    records = [Record("a.jpg", np.array([[1, 2, 30, 40]], np.float32), np.array([3]), np.array([True]), 7, (48, 64), "a.xml"),
               Record("b.png", np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), 8, None, "c.json#8",
                      areas=np.zeros(0))]
    packed = RecordList(records)
    assert len(packed) == 2 and isinstance(packed._data, np.ndarray)
    for got, want in zip([packed[0], packed[-1], *packed[1:]], [records[0], records[1], records[1]]):
        for f in ("file", "image_id", "size", "source"):
            assert getattr(got, f) == getattr(want, f)
        for f in ("boxes", "labels", "ignore", "areas"):
            a, b = getattr(got, f), getattr(want, f)
            assert (a is None) == (b is None) and (a is None or (a.dtype == b.dtype and np.array_equal(a, b)))
    assert packed[0].boxes.flags.writeable
    with pytest.raises(IndexError):
        packed[2]
    assert isinstance(datasets.train.records, RecordList) and len(datasets.train.records) == len(datasets.train)


def test_warnings_about_items_stop_after_a_few_of_a_kind(datasets):
    """A dataset of phone photos or of wrong <size> values printed one warning per image, in every
    loader process: now the first few of each kind, then one line that more are not shown."""
    import dataclasses
    import warnings

    from retinanet.data.dataset import ITEM_WARNINGS_SHOWN
    records = [dataclasses.replace(r, size=(r.size[0] + 1, r.size[1])) for r in datasets.train.records]  # all wrong
    assert len(records) > ITEM_WARNINGS_SHOWN + 1
    ds = DetectionDataset(records, ItemTransform(min_size=64, max_size=64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(ds)):
            ds[i]
    said = [str(w.message) for w in caught]
    assert sum("annotation says" in m for m in said) == ITEM_WARNINGS_SHOWN
    assert sum("more items with size warnings like the above: not shown" in m for m in said) == 1
