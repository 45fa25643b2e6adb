"""Which of the carried wheels in ``.whl/`` this interpreter can install: one per package.

    python benchmarks/gpu_wheels.py .whl        # prints the chosen wheel paths, one a line

``make gpu-wheels`` downloads wheels for one CPython version (3.12 by default, the GPU
machine's), and ``make gpu-wheels GPU_PY=3.11`` adds those of another into the same folder. pip
refuses a wheel built for another Python and stops at two versions of one package, so
``benchmarks/gpu_check.sh`` installs only what this prints: for each package, the wheel whose
tags this interpreter supports best (pip's own order of ``sys_tags``), the newest version first.
Skipped wheels are named on stderr. Exit status 0 even when nothing fits (the check then says
which imports are missing).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename
except ImportError:  # the interpreter has pip but not packaging: pip carries its own copy
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import parse_wheel_filename


def pick_wheels(paths: list[Path], supported: list) -> tuple[list[Path], list[str]]:
    """(chosen wheels, one note per skipped wheel).

    Args:
        paths: ``*.whl`` files.
        supported: this interpreter's tags, most preferred first (``list(sys_tags())``).
    """
    rank = {tag: i for i, tag in enumerate(supported)}
    best: dict[str, tuple[tuple, Path]] = {}
    notes = []
    for path in sorted(paths):
        try:
            name, version, _, tags = parse_wheel_filename(path.name)
        except Exception as err:  # a file that is not a well-named wheel
            notes.append(f"{path.name}: not a wheel name ({err})")
            continue
        fits = [rank[t] for t in tags if t in rank]
        if not fits:
            notes.append(f"{path.name}: not for this interpreter ({sys.implementation.name} "
                         f"{sys.version_info.major}.{sys.version_info.minor})")
            continue
        key = (version, -min(fits))  # newest version, then the best-ranked tag
        if name not in best or key > best[name][0]:
            if name in best:
                notes.append(f"{best[name][1].name}: another wheel of {name} fits better")
            best[name] = (key, path)
        else:
            notes.append(f"{path.name}: another wheel of {name} fits better")
    return [p for _, p in sorted(best.values(), key=lambda kv: kv[1].name)], notes


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else ".whl")
    chosen, notes = pick_wheels(list(folder.glob("*.whl")), list(sys_tags()))
    for note in notes:
        print(f"skipped {note}", file=sys.stderr)
    print("\n".join(str(p) for p in chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
