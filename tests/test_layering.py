"""Imports run one way: ``cli -> engine -> model, data``, with ``config``, ``errors`` and the other
neutral top-level modules (``geometry``, ``files``) below all of them. Inside ``engine``
the rooms run one way too: ``train -> evaluate -> runtime``, ``infer -> runtime``,
``export -> runtime``; every engine module lives in a room.

Every module's imports are read with ``ast`` (not by importing it), function-level ones included,
so a cycle hidden behind an import inside a function is still found.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "retinanet"

# Layer of each module -> the layers it may import.
ALLOWED = {
    "cli": {"cli", "root", "engine", "model", "data", "neutral"},
    "root": {"engine", "model", "neutral"},  # retinanet/__init__.py re-exports Detector, build_model, load_weights
    "engine": {"engine", "model", "data", "neutral"},
    "model": {"model", "neutral"},
    "data": {"data", "neutral"},
    "neutral": {"neutral"},
}
# Room of engine -> the rooms it may import.
ENGINE_ROOMS = {
    "runtime": {"runtime"},
    "evaluate": {"evaluate", "runtime"},
    "train": {"train", "evaluate", "runtime"},
    "infer": {"infer", "runtime"},
    "export": {"export", "runtime"},
}
CLI_MODULES = {"retinanet.__main__"}  # and every module of the retinanet.cli package
# Optional dependencies: the only imports allowed inside functions.
OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "tensorboard", "torch.utils.tensorboard", "faster_coco_eval")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if module == "retinanet":
        return "root"
    if module in CLI_MODULES:
        return "cli"
    if len(parts) > 2 or (PACKAGE / parts[1]).is_dir():
        return parts[1]  # engine, model, data
    return "neutral"


def room_of(module: str) -> str | None:
    """``train`` for ``retinanet.engine.train.loop``; None outside engine (and for the package itself)."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["retinanet", "engine"] and len(parts) > 2 else None


def _is_function_level(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return True
    return False


def parse_imports(source: str, package: str = "retinanet") -> list[tuple[str, list[str], int, bool]]:
    """``(imported module, names, line, function-level?)`` for each import statement of
    ``source``; relative imports are resolved against ``package``."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, [], node.lineno, _is_function_level(node, parents)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            out.append((base, [a.name for a in node.names], node.lineno, _is_function_level(node, parents)))
    return sorted(out, key=lambda item: item[2])


def read_imports(path: Path) -> list[tuple[str, list[str], int, bool]]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return parse_imports(path.read_text(encoding="utf-8"), package)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported retinanet module: first line}; ``from pkg import mod`` points at ``pkg.mod``."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges: dict[str, int] = {}
        for base, names, line, _ in read_imports(path):
            if base != "retinanet" and not base.startswith("retinanet."):
                continue
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            if len(targets) < len(names) or not names:
                targets.append(base)  # names defined in the module itself (or a plain import)
            for t in targets:
                edges.setdefault(t, line)
        graph[name] = edges
    return graph


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"


def test_graph_sees_the_package():
    graph = import_graph()
    assert {"retinanet.cli", "retinanet.model.retinanet", "retinanet.data.build", "retinanet.engine.evaluate.loop"} <= set(graph)
    assert room_of("retinanet.engine.train.loop") == "train" and room_of("retinanet.config") is None
    assert "retinanet.model.anchors" in graph["retinanet.model.retinanet"]  # the reader finds imports
    assert layer_of("retinanet.config") == "neutral" and layer_of("retinanet.data") == "data"


def test_imports_run_one_way():
    """model and data never import engine or cli, nor each other; neutral modules import only
    neutral ones; engine never imports cli."""
    bad = []
    for module, edges in import_graph().items():
        src = layer_of(module)
        for target, line in edges.items():
            dst = layer_of(target)
            if dst not in ALLOWED[src]:
                bad.append(f"{_where(module, line)}: {src} module {module} imports {dst} module {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_engine_rooms_run_one_way():
    """Every engine module is in a room (``engine/<room>/``), and a room imports only the rooms
    below it: ``train -> evaluate -> runtime``, ``infer -> runtime``, ``export -> runtime``."""
    graph = import_graph()
    flat = [m for m in graph if room_of(m) is not None and m.count(".") == 2 and room_of(m) not in ENGINE_ROOMS]
    assert not flat, f"engine modules outside the rooms {sorted(ENGINE_ROOMS)}: {flat}"
    bad = []
    for module, edges in graph.items():
        src = room_of(module)
        for target, line in edges.items():
            dst = room_of(target)
            if src is not None and dst is not None and dst not in ENGINE_ROOMS[src]:
                bad.append(f"{_where(module, line)}: engine.{src} module {module} imports engine.{dst} module {target}")
    assert not bad, "imports against the engine rooms:\n" + "\n".join(bad)


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import), Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, {}):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_hidden_cycle():
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = _cycles(graph)
    text = []
    for comp in cycles:
        edges = [f"  {_where(m, line)}: {m} -> {t}" for m in comp for t, line in graph[m].items() if t in comp]
        text.append(f"cycle among {', '.join(comp)}:\n" + "\n".join(edges))
    assert not cycles, "\n".join(text)


def test_function_level_imports_only_for_optional_dependencies():
    bad = []
    for module, path in MODULES.items():
        for base, _, line, nested in read_imports(path):
            if nested and not base.startswith(OPTIONAL):
                bad.append(f"{_where(module, line)}: import of {base} inside a function")
    assert not bad, f"function-level imports (allowed only for {', '.join(OPTIONAL)}):\n" + "\n".join(bad)


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    import onnx\n    from torch.utils.tensorboard import SummaryWriter\n", []),
    ("def f():\n    from retinanet.model import build_model\n", ["retinanet.model"]),
    ("class A:\n    def f(self):\n        import yaml\n", ["yaml"]),
    ("def f():\n    from . import boxes\n", ["retinanet.model"]),
    ("import yaml\ntry:\n    import onnx\nexcept ImportError:\n    onnx = None\n", []),
])
def test_function_level_reader(source, expected):
    found = [b for b, _, _, nested in parse_imports(source, "retinanet.model") if nested and not b.startswith(OPTIONAL)]
    assert found == expected


ARCHITECTURE = PACKAGE.parent / "docs" / "ARCHITECTURE.md"
TABLE_START, TABLE_END = "<!-- import table: generated by tests/test_layering.py -->", "<!-- end of import table -->"


def import_table() -> str:
    """The Markdown table of which package module imports which (every module that imports one)."""
    def short(name: str) -> str:
        return name.removeprefix("retinanet.") if name != "retinanet" else "retinanet (root)"

    rows = ["| module | imports |", "|---|---|"]
    for module, edges in sorted(import_graph().items()):
        targets = sorted(short(t) for t in edges if t != module)
        if targets:
            rows.append(f"| `{short(module)}` | {', '.join(f'`{t}`' for t in targets)} |")
    return "\n".join(rows)


def test_architecture_import_table_is_the_real_one():
    """docs/ARCHITECTURE.md's import table is the import graph read from the code (on a change,
    paste the table this test prints between the markers)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert TABLE_START in text and TABLE_END in text, f"{ARCHITECTURE}: no import table markers"
    documented = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    expected = import_table()
    assert documented == expected, f"{ARCHITECTURE}: the import table is out of date; the real one:\n{expected}"


def test_engine_tests_mirror_the_rooms():
    """``tests/engine/<room>/`` for each engine room and no test file outside them, so a room's tests are found
    where its code is."""
    tests = Path(__file__).resolve().parent / "engine"
    flat = sorted(p.name for p in tests.glob("test_*.py"))
    assert not flat, f"engine tests outside tests/engine/<room>/: {flat}"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= set(ENGINE_ROOMS), f"tests/engine folders that are no engine room: {sorted(folders - set(ENGINE_ROOMS))}"
    assert all(any((tests / room).glob("test_*.py")) for room in ENGINE_ROOMS), "an engine room without tests"
