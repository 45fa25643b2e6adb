#!/usr/bin/env bash
# The GPU check in one command (also `make gpu-check`), from the repository root:
#
#     bash benchmarks/gpu_check.sh            # results in $OUT, else gpu_check_out/
#
# 1. Python: the README's set-up (python3 -m venv .venv; pip install -c constraints.txt -e ".[export,test]").
#    A .venv that already imports torch and retinanet is reused. When the install fails (no internet)
#    and the system python3 imports torch with CUDA, that interpreter is used with PYTHONPATH=repo.
# 2. nvidia-smi, torch / CUDA / cuDNN versions, which optional modules import.
# 3. pytest -m cuda tests/cuda (CUDA tests; they skip without a GPU).
# 4. benchmarks/bench_gpu.py (ours vs torchvision at 800x1216, loader, sync debug, CUDA graphs, compile).
# 5. One summary (also $OUT/summary.txt and $OUT/summary.json). Exit status 1 if a stage failed.
#
# Every stage has a `timeout` (seconds; environment overrides below); the defaults add up to
# under 8 minutes. Outputs: $OUT/gpu_check.log (everything), setup.log, env.txt, pytest_cuda.log,
# pytest_cuda.xml, bench_gpu.log, bench_gpu.json, summary.txt, summary.json.
#
# Environment:
#   OUT                         output folder [gpu_check_out]
#   GPU_CHECK_PYTHON            use this interpreter, no install
#   GPU_CHECK_SYSTEM_PYTHON     the fallback interpreter when the install fails [python3]
#   GPU_CHECK_VENV              the virtual environment to create/reuse [.venv]
#   GPU_CHECK_ALLOW_CPU=1       dry run without a GPU: accept a CPU-only torch, run the benchmark with
#                               --device cpu --tiny (the CUDA tests skip). Proves the script works.
#   GPU_CHECK_INSTALL_TIMEOUT   [90]  GPU_CHECK_TEST_TIMEOUT [150]  GPU_CHECK_BENCH_TIMEOUT [210]
#   GPU_CHECK_BENCH_ARGS        extra bench_gpu.py options

set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec > >(tee "$OUT/gpu_check.log") 2>&1

ALLOW_CPU="${GPU_CHECK_ALLOW_CPU:-0}"
VENV="${GPU_CHECK_VENV:-.venv}"
SYSTEM_PYTHON="${GPU_CHECK_SYSTEM_PYTHON:-python3}"
INSTALL_TIMEOUT="${GPU_CHECK_INSTALL_TIMEOUT:-90}"
TEST_TIMEOUT="${GPU_CHECK_TEST_TIMEOUT:-150}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-210}"
START=$SECONDS
STAGES=()   # "name|status|seconds|note"

stage() { echo; echo "=== $* ($(date -u +%H:%M:%S) UTC, ${SECONDS}s since start) ==="; }
record() { STAGES+=("$1|$2|$3|$4"); }
status_of() {  # exit code -> ok / TIMEOUT / FAILED (rc N)
    case "$1" in 0) echo ok ;; 124|137) echo TIMEOUT ;; *) echo "FAILED (rc $1)" ;; esac
}

# The check a usable interpreter must pass: torch with CUDA (any torch with GPU_CHECK_ALLOW_CPU=1).
torch_ok() {
    if [ "$ALLOW_CPU" = 1 ]; then
        "$1" -c "import torch" >/dev/null 2>&1
    else
        "$1" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1
    fi
}

# --- 1. Python --------------------------------------------------------------------------------------
stage "1. Python set-up"
t0=$SECONDS
PY=""
SETUP_NOTE=""
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY="$GPU_CHECK_PYTHON"
    SETUP_NOTE="GPU_CHECK_PYTHON=$PY (no install)"
elif [ -x "$VENV/bin/python" ] && torch_ok "$VENV/bin/python" && "$VENV/bin/python" -c "import retinanet, pytest" >/dev/null 2>&1; then
    PY="$VENV/bin/python"
    SETUP_NOTE="reused $VENV (torch and retinanet import; no install)"
else
    echo "README install: python3 -m venv $VENV; pip install -c constraints.txt -e \".[export,test]\" (timeout ${INSTALL_TIMEOUT}s; log $OUT/setup.log)"
    ( "$SYSTEM_PYTHON" -m venv "$VENV" \
      && timeout "$INSTALL_TIMEOUT" "$VENV/bin/python" -m pip install -q --retries 0 --timeout 10 -c constraints.txt -e ".[export,test]" \
      && torch_ok "$VENV/bin/python" ) >"$OUT/setup.log" 2>&1
    rc=$?
    if [ $rc = 0 ]; then
        PY="$VENV/bin/python"
        SETUP_NOTE="installed into $VENV as the README does"
    else
        echo "install failed (rc $rc); last lines of $OUT/setup.log:"
        tail -n 5 "$OUT/setup.log"
        if torch_ok "$SYSTEM_PYTHON"; then
            PY="$(command -v "$SYSTEM_PYTHON")"
            SETUP_NOTE="install failed (rc $rc, no internet?): using the existing interpreter $PY with PYTHONPATH=$ROOT"
        fi
    fi
fi
if [ -z "$PY" ]; then
    echo "no usable Python: the install failed and '$SYSTEM_PYTHON' does not import torch with CUDA"
    record setup "FAILED" $((SECONDS - t0)) "no interpreter with torch+CUDA"
    printf '%s\n' "${STAGES[@]}" >"$OUT/summary.txt"
    exit 1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package, installed or not
export MPLBACKEND=Agg
echo "$SETUP_NOTE"
record setup ok $((SECONDS - t0)) "$SETUP_NOTE"

# --- 2. Machine and versions -------------------------------------------------------------------------
stage "2. Machine, driver, versions"
t0=$SECONDS
{
    timeout 30 nvidia-smi || echo "nvidia-smi: not available (rc $?)"
    timeout 60 "$PY" - <<'EOF'
import importlib, platform, sys
import torch, torchvision
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, cuda available {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
missing = []
for name in ("retinanet", "pytest", "numpy", "PIL", "yaml", "defusedxml", "pycocotools", "faster_coco_eval",
             "matplotlib", "tqdm", "onnx", "onnxruntime", "onnxscript"):
    try:
        importlib.import_module(name)
    except Exception as err:
        missing.append(f"{name} ({type(err).__name__})")
print("modules that do not import:", ", ".join(missing) or "none")
EOF
} 2>&1 | tee "$OUT/env.txt"
rc=${PIPESTATUS[0]}
record versions "$(status_of $rc)" $((SECONDS - t0)) "$(grep -m1 '^torch ' "$OUT/env.txt" || true)"

# --- 3. CUDA tests -----------------------------------------------------------------------------------
stage "3. pytest -m cuda tests/cuda (timeout ${TEST_TIMEOUT}s)"
t0=$SECONDS
timeout "$TEST_TIMEOUT" "$PY" -m pytest -m cuda tests/cuda -v -rs -p no:cacheprovider \
    --junitxml="$OUT/pytest_cuda.xml" 2>&1 | tee "$OUT/pytest_cuda.log"
rc=${PIPESTATUS[0]}
record cuda-tests "$(status_of $rc)" $((SECONDS - t0)) "$(grep -E '^=+ .*(passed|failed|skipped|error).* =+$' "$OUT/pytest_cuda.log" | tail -n1 | tr -d '=' | xargs)"

# --- 4. GPU benchmark ----------------------------------------------------------------------------------
stage "4. benchmarks/bench_gpu.py (timeout ${BENCH_TIMEOUT}s)"
t0=$SECONDS
if [ "$ALLOW_CPU" = 1 ] && ! "$PY" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
    BENCH=(--device cpu --tiny --cuda-graphs --sync-debug 2)  # the CPU rows run; the CUDA-only rows report their error
else
    BENCH=(--compile --cuda-graphs --sync-debug 20)
fi
# the rows stop starting 45 s before the deadline, so the summary table is printed and saved
timeout "$BENCH_TIMEOUT" "$PY" benchmarks/bench_gpu.py "${BENCH[@]}" --time-budget $((BENCH_TIMEOUT - 45)) \
    --json "$OUT/bench_gpu.json" ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_gpu.log"
rc=${PIPESTATUS[0]}
bench_note() {  # "N rows, M with an error (names)" from the JSON file
    "$PY" - "$OUT/bench_gpu.json" <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError, KeyError):
    sys.exit(print("no results file"))
bad = [r["name"] for r in rows if "error" in r]
print(f"{len(rows)} rows, {len(bad)} with an error" + (f" ({', '.join(bad)}; see bench_gpu.log)" if bad else ""))
EOF
}
record benchmark "$(status_of $rc)" $((SECONDS - t0)) "$(bench_note)"

# --- 5. Summary ------------------------------------------------------------------------------------------
stage "5. Summary"
{
    echo "GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), total ${SECONDS}s, outputs in $OUT"
    echo "python: $SETUP_NOTE"
    for s in "${STAGES[@]}"; do
        IFS='|' read -r name status secs note <<<"$s"
        printf '  %-11s %-14s %4ss  %s\n' "$name" "$status" "$secs" "$note"
    done
    if [ -s "$OUT/bench_gpu.json" ]; then
        echo
        "$PY" - "$OUT/bench_gpu.json" <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
from bench_gpu import summary_lines
data = json.load(open(sys.argv[1]))
print(data["machine"])
print("\n".join(summary_lines(data["rows"])))
EOF
    fi
} | tee "$OUT/summary.txt"
FAILED=0
for s in "${STAGES[@]}"; do
    case "$s" in *"|ok|"*) ;; *) FAILED=1 ;; esac
done
"$PY" - "$OUT/summary.json" "$SECONDS" "$FAILED" "${STAGES[@]}" <<'EOF'
import json, sys
path, total, failed, *stages = sys.argv[1:]
rows = [dict(zip(("stage", "status", "seconds", "note"), s.split("|", 3))) for s in stages]
json.dump({"total_seconds": int(total), "ok": failed == "0", "stages": rows}, open(path, "w"), indent=1)
EOF
echo "total ${SECONDS}s; $([ $FAILED = 0 ] && echo 'all stages ok' || echo 'SOME STAGES FAILED')"
exit $FAILED
