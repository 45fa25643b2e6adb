"""Class maps: ``{"name": id}`` with ids >= 1 (id 0 is never a real class).

``num_classes`` is max id + 1: the number of classification outputs, indexed by class id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

from retinanet.errors import DataError
from retinanet.files import write_atomic

PASCAL_VOC_CLASSES = Path(__file__).with_name("pascal_voc_classes.json")
COCO_OUTPUTS = 91  # torchvision's COCO heads: one output per COCO category id (with gaps), 0 unused


def coco_category_names() -> dict[int, str]:
    """COCO category id -> name, the classes of torchvision's 91-output COCO heads (id = output
    index; the "N/A" gaps and the background output 0 left out)."""
    names = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return {i: n for i, n in enumerate(names) if i > 0 and n not in ("N/A", "__background__")}


def default_class_names(num_classes: int) -> dict[int, str] | None:
    """The class names a head of ``num_classes`` outputs has without a class map of its own:
    COCO's for ``COCO_OUTPUTS`` (91, torchvision's COCO files), else None (unknown)."""
    return coco_category_names() if num_classes == COCO_OUTPUTS else None


def _keys_once(pairs: list[tuple[str, object]], repeated: list[str]) -> dict:
    """A JSON object as a dict; each key given more than once is described in ``repeated``."""
    values: dict[str, list] = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    repeated += [f"class name {k!r} is given {len(v)} times (ids {', '.join(map(repr, v))})" for k, v in values.items() if len(v) > 1]
    return dict(pairs)


class ClassMap:
    """A validated mapping between class names and class ids.

    Args:
        mapping: ``{"name": id}``; ids are ints >= 1, names and ids unique.
        source: where the mapping came from, named in error messages.

    Raises:
        DataError: naming ``source`` and every problem.
    """

    def __init__(self, mapping: dict[str, int], source: str = "class map"):
        problems = []
        if not isinstance(mapping, dict) or not mapping:
            raise DataError([f"{source}: a class map must be a non-empty JSON object {{\"name\": id}}"])
        seen: dict[int, str] = {}
        for name, cid in mapping.items():
            if not isinstance(name, str) or not name.strip():
                problems.append(f"{source}: class name {name!r} is not a non-empty string")
            if isinstance(cid, bool) or not isinstance(cid, int) or cid < 1:
                problems.append(f"{source}: class {name!r} has id {cid!r}; ids must be integers >= 1 (0 is background)")
            elif cid in seen:
                problems.append(f"{source}: classes {seen[cid]!r} and {name!r} share id {cid}")
            else:
                seen[cid] = name
        if problems:
            raise DataError(problems, summary=f"invalid class map {source}")
        self._ids = dict(sorted(mapping.items(), key=lambda kv: kv[1]))
        self._names = {cid: name for name, cid in self._ids.items()}
        self.source = source

    @classmethod
    def discover(cls, names: Iterable[str], warnings: list[str] | None = None) -> ClassMap:
        """Class map from the names found in annotations: sorted names get ids 1..K. Names that
        differ only in case (``Dog``, ``dog``: a typo in a labelling tool, most likely) stay
        distinct classes, said in ``warnings``."""
        found = sorted(set(names))
        alike: dict[str, list[str]] = {}
        for n in found:
            alike.setdefault(n.casefold(), []).append(n)
        if warnings is not None:
            warnings += [f"class names {', '.join(map(repr, g))} differ only in case: they are different classes "
                         "(rename them in the annotations if they are one)" for g in alike.values() if len(g) > 1]
        return cls({n: i + 1 for i, n in enumerate(found)}, source="discovered from the annotations")

    @classmethod
    def load(cls, path: str | Path) -> ClassMap:
        """Read a JSON ``{"name": id}`` file. Raises ``DataError`` naming ``path``."""
        path = Path(path)
        repeated: list[str] = []
        try:
            mapping = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=lambda pairs: _keys_once(pairs, repeated))
        except FileNotFoundError:
            raise DataError([f"{path}: class map file not found"], summary=f"invalid class map {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError([f"{path}: not a readable JSON class map ({err})"], summary=f"invalid class map {path}") from None
        if repeated:  # json.loads would keep the last silently: which one is meant cannot be known
            raise DataError([f"{path}: {r}" for r in repeated], summary=f"invalid class map {path}")
        return cls(mapping, source=str(path))

    @classmethod
    def pascal_voc(cls) -> ClassMap:
        """The 20 Pascal VOC classes, ids 1..20 in the usual order (aeroplane .. tvmonitor)."""
        return cls.load(PASCAL_VOC_CLASSES)

    def save(self, path: str | Path) -> None:
        """Write the map as JSON ``{"name": id}`` (ids ascending)."""
        write_atomic(path, json.dumps(self._ids, indent=1) + "\n")

    @property
    def names(self) -> list[str]:
        """Class names in ascending id order."""
        return list(self._ids)

    @property
    def ids(self) -> list[int]:
        """Class ids, ascending."""
        return list(self._names)

    @property
    def num_classes(self) -> int:
        """Number of classification outputs: max id + 1 (id 0 unused)."""
        return max(self._names) + 1

    def to_dict(self) -> dict[str, int]:
        return dict(self._ids)

    def name_of(self, cid: int) -> str:
        """Name of class id ``cid`` (``KeyError`` if unknown)."""
        return self._names[int(cid)]

    def id_of(self, name: str) -> int | None:
        """Id of class ``name``, or None when the map does not have it."""
        return self._ids.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassMap) and other._ids == self._ids

    def __repr__(self) -> str:
        return f"ClassMap({self._ids})"
