"""The GPU check's summary: the numbers that matter first, then the stages, then the full tables.

    python benchmarks/gpu_summary.py OUT STAGES_TSV TOTAL_SECONDS BUDGET_SECONDS

Reads what ``gpu_check.sh`` left in OUT (``pytest_cuda.xml``, ``bench_gpu.json``, ``cli.json``)
and the stages so far (one ``name<TAB>status<TAB>seconds<TAB>note`` line each); writes
``OUT/summary.txt`` and ``OUT/summary.json`` and prints the text. ``gpu_check.sh`` calls it after
every stage, so a run cut short still leaves the numbers measured so far. Standard library only
(the benchmark's table formatting is used when ``bench_gpu`` imports).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET  # our own pytest output, not untrusted input
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pytest_counts(path: Path) -> dict | None:
    """tests, passed, failed, errors, skipped from a JUnit XML file (None if absent or unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{tc.get('classname', '').rsplit('.', 1)[-1]}::{tc.get('name')}" for s in suites for tc in s.iter("testcase")
              if tc.find("failure") is not None or tc.find("error") is not None]
    return {"tests": c["tests"], "passed": c["tests"] - c["failures"] - c["errors"] - c["skipped"],
            "failed": c["failures"], "errors": c["errors"], "skipped": c["skipped"], "failed_names": failed}


def bench_headline(rows: list[dict]) -> list[str]:
    """ours vs torchvision images/s of the train/infer rows (AMP first), peak memory, syncs per step."""
    lines = []
    order = sorted((r for r in rows if r["kind"] in ("train", "infer", "network")),
                   key=lambda r: ("fp32" in r["name"], r["kind"] != "train", r["name"]))
    for r in order:
        if "error" in r:
            lines.append(f"{r['name']:<26} ERROR {r['error'][:160]}")
            continue
        mem = (f"; step peak GiB ours {r['ours_peak_gib']:.2f}, tv {r['torchvision_peak_gib']:.2f}"
               if "ours_peak_gib" in r else "")
        lines.append(f"{r['name']:<26} images/s ours {r['ours']:8.1f}  tv {r['torchvision']:8.1f}  "
                     f"{r['ratio']:5.2f}x{mem}")
    for r in rows:
        if r["kind"] == "sync":
            lines.append(f"{r['name']:<26} " + (f"ERROR {r['error'][:160]}" if "error" in r else
                                                f"{r['syncs_per_step']:.1f} syncs per step ({r['syncs']} in {r['steps']} steps)"))
    loaders = [r for r in rows if r["kind"] == "loader" and "error" not in r and r.get("images_per_s")]
    if loaders:
        best = max(loaders, key=lambda r: r["images_per_s"])
        lines.append(f"{'loader (bench, 800 px)':<26} best {best['name']}: {best['images_per_s']:.1f} images/s")
    return lines


def full_table(data: dict) -> list[str]:
    try:
        sys.path.insert(0, str(HERE))
        from bench_gpu import summary_lines  # imports torch and retinanet
    except Exception as err:  # the interpreter that failed the check: raw rows still tell
        return [f"(bench_gpu does not import: {type(err).__name__}: {err}; raw rows)"] + \
               [json.dumps(r) for r in data.get("rows", [])]
    return summary_lines(data.get("rows", []))


def main(argv: list[str]) -> int:
    out, stages_file, total, budget = Path(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3])
    stages = []
    if stages_file.is_file():
        for line in stages_file.read_text().splitlines():
            name, status, secs, note = (line.split("\t", 3) + ["", "", ""])[:4]
            stages.append({"stage": name, "status": status, "seconds": int(secs or 0), "note": note})
    bad = [s["stage"] for s in stages if s["status"] != "ok"]
    tests = pytest_counts(out / "pytest_cuda.xml")
    bench = read_json(out / "bench_gpu.json")
    cli = read_json(out / "cli.json")

    lines = [f"GPU check: {'all stages ok' if not bad else 'FAILED: ' + ', '.join(bad)}; {len(stages)} stages, "
             f"{total} s of the {budget} s budget"]
    if tests:
        lines.append(f"CUDA tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped" + (f" ({', '.join(tests['failed_names'])})" if tests["failed_names"] else ""))
    else:
        lines.append("CUDA tests: no results")
    if bench:
        cfg = bench.get("config", {})
        lines.append(f"benchmark ({cfg.get('arch')}, batch {cfg.get('batch_size')} x {cfg.get('height')}x{cfg.get('width')}, "
                     f"{bench.get('device')}):")
        lines += ["  " + x for x in bench_headline(bench.get("rows", []))]
    else:
        lines.append("benchmark: no results")
    if cli:
        sys.path.insert(0, str(HERE))
        from gpu_cli import summary_lines as cli_lines  # standard library only
        lines += cli_lines(cli)
    else:
        lines.append("CLI: no results")
    lines.append("")
    lines.append("stages:")
    lines += [f"  {s['stage']:<11} {s['status']:<22} {s['seconds']:4d} s  {s['note']}" for s in stages]
    if bench:
        lines += ["", f"machine: {bench.get('machine')}", *full_table(bench)]
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps({"total_seconds": total, "budget_seconds": budget, "ok": not bad,
                                                  "stages": stages, "cuda_tests": tests}, indent=1))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
