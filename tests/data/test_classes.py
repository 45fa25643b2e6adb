"""ClassMap: loading, discovery, errors naming the file."""

from __future__ import annotations

import json

import pytest

from retinanet.data import ClassMap
from retinanet.data.classes import coco_category_names
from retinanet.errors import DataError


def test_round_trip_and_accessors(tmp_path):
    cm = ClassMap({"dog": 2, "cat": 1, "bird": 5})
    assert cm.names == ["cat", "dog", "bird"] and cm.ids == [1, 2, 5]
    assert cm.num_classes == 6 and cm.name_of(5) == "bird" and cm.id_of("dog") == 2 and cm.id_of("cow") is None
    cm.save(tmp_path / "c.json")
    assert ClassMap.load(tmp_path / "c.json") == cm
    assert json.loads((tmp_path / "c.json").read_text()) == {"cat": 1, "dog": 2, "bird": 5}


def test_discover_sorts_names():
    assert ClassMap.discover(["z", "a", "m", "a"]).to_dict() == {"a": 1, "m": 2, "z": 3}


def test_pascal_voc_classes():
    cm = ClassMap.pascal_voc()
    assert len(cm) == 20 and cm.name_of(1) == "aeroplane" and cm.name_of(20) == "tvmonitor"
    assert cm.id_of("person") == 15 and cm.num_classes == 21


@pytest.mark.parametrize(
    "mapping, needle",
    [({"a": 0}, "ids must be integers >= 1"), ({"a": 1, "b": 1}, "share id 1"), ({"a": "1"}, "ids must be"), ({}, "non-empty")],
)
def test_invalid_maps_name_the_file(tmp_path, mapping, needle):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(mapping))
    with pytest.raises(DataError) as err:
        ClassMap.load(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ClassMap.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DataError, match="bad.json: not a readable JSON"):
        ClassMap.load(tmp_path / "bad.json")


def test_coco_category_names_are_the_91_output_ids():
    names = coco_category_names()
    assert len(names) == 80 and min(names) == 1 and max(names) == 90  # 11 unused ids ("N/A")
    assert names[1] == "person" and names[90] == "toothbrush" and 12 not in names
    assert ClassMap({n: i for i, n in names.items()}).num_classes == 91


def test_a_class_name_given_twice_is_an_error_naming_both_ids(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text('{"cat": 1, "dog": 2, "cat": 3}')  # json.loads alone keeps the last: cat = 3
    with pytest.raises(DataError) as err:
        ClassMap.load(path)
    assert err.value.problems == [f"{path}: class name 'cat' is given 2 times (ids 1, 3)"]


def test_discovered_names_that_differ_only_in_case_are_said():
    said: list[str] = []
    m = ClassMap.discover(["dog", "Dog", "cat", "dog"], said)
    assert m.to_dict() == {"Dog": 1, "cat": 2, "dog": 3}
    assert said == ["class names 'Dog', 'dog' differ only in case: they are different classes "
                    "(rename them in the annotations if they are one)"]
