#!/usr/bin/env bash
# The GPU check in one command (also `make gpu-check`), from the repository root:
#
#     make gpu-wheels                         # here, once: .whl/ (the packages the GPU image lacks)
#     bash benchmarks/gpu_check.sh            # there: results in $OUT, else gpu_check_out/
#
# Written for the lent GPU machine (BENCHMARKS.md "GPU": its image has torch but not defusedxml,
# pycocotools, faster-coco-eval, and no network). Stages, each under a deadline, all of them under
# GPU_CHECK_BUDGET seconds (345: a rerun fits the 15-minute lease):
# 1. setup: the interpreter (GPU_CHECK_PYTHON; else, when .whl/ holds wheels, the system python3
#    with no index install; else a .venv that works, or the README's install, or the system
#    python3), then every .whl/ wheel that fits it, `pip install --no-index --no-deps --target`
#    into a folder put on PYTHONPATH; then every retinanet module and the test tools must import
#    (if not, the later stages are skipped: they would fail the same way).
# 2. versions: nvidia-smi, python / torch / torchvision / CUDA / cuDNN, the GPU, missing modules.
# 3. cuda-tests: pytest -m cuda tests/cuda (they skip without a GPU).
# 4. bench: benchmarks/bench_gpu.py (ours vs torchvision at 800x1216, AMP, memory, loader, syncs,
#    CUDA graphs, torch.compile when time is left); it skips rows that would start late.
# 5. cli: benchmarks/gpu_cli.py, the user's path: make-synthetic, `retinanet train` (resnet50_fpn,
#    512 px, AMP auto, workers sized to the cores, pycocotools eval each epoch) for about a minute,
#    the loader alone, `retinanet eval` and `retinanet predict` on best.pt.
# After every stage benchmarks/gpu_summary.py rewrites summary.txt / summary.json (numbers first),
# so a run cut short still tells what it measured. Exit status 1 if a stage failed or timed out.
#
# $OUT holds 6 plain files, no folders: gpu_check.log (everything, all stages), summary.txt,
# summary.json, pytest_cuda.xml, cli.json, bench_gpu.json. Scratch goes to a temporary folder.
#
# Environment:
#   OUT                        output folder [gpu_check_out]
#   GPU_CHECK_PYTHON           use this interpreter, no index install (.whl/ wheels still go in)
#   GPU_CHECK_SYSTEM_PYTHON    the image's interpreter [python3]
#   GPU_CHECK_VENV             the virtual environment to reuse/create without wheels [.venv]
#   GPU_CHECK_WHEELS           the carried wheels [.whl]
#   GPU_CHECK_ALLOW_CPU=1      dry run without a GPU: a CPU-only torch is accepted, the benchmark and
#                              the CLI run tiny on the CPU (the CUDA tests skip). With GPU_CHECK_PYTHON
#                              set to an interpreter shaped like the image and PIP_NO_INDEX=1, this
#                              is the lent machine without its GPU (BENCHMARKS.md "GPU").
#   GPU_CHECK_BUDGET           [345] seconds for the whole check; each stage also has its own:
#   GPU_CHECK_SETUP_TIMEOUT [90]  GPU_CHECK_TEST_TIMEOUT [130]  GPU_CHECK_BENCH_TIMEOUT [120]
#   GPU_CHECK_CLI_TIMEOUT [130]  GPU_CHECK_BENCH_ARGS, GPU_CHECK_CLI_ARGS: extra options
#   GPU_CHECK_STAGES           the stages after setup and versions ["cuda-tests bench cli"]; e.g. "bench"
#                              to rerun only the benchmark

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
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
BUDGET="${GPU_CHECK_BUDGET:-345}"
RESERVE=10  # kept for the summary
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
SITE="$WORK/site"
STAGES="$WORK/stages.tsv"
: >"$STAGES"
PY=""
SUMMARY_PY="$SYSTEM_PYTHON"
ASKED=" ${GPU_CHECK_STAGES-cuda-tests bench cli} "

stage() { echo; echo "=== $* ($(date -u +%H:%M:%S) UTC, ${SECONDS}s since start) ==="; }
status_of() {  # exit code -> ok / TIMEOUT / FAILED (rc N)
    case "$1" in 0) echo ok ;; 124|137) echo TIMEOUT ;; *) echo "FAILED (rc $1)" ;; esac
}
summary() {  # rewrite summary.txt / summary.json from what is there (quiet unless $1 = print)
    if [ "${1:-}" = print ]; then
        timeout 60 "$SUMMARY_PY" benchmarks/gpu_summary.py "$OUT" "$STAGES" "$SECONDS" "$BUDGET"
    else
        timeout 60 "$SUMMARY_PY" benchmarks/gpu_summary.py "$OUT" "$STAGES" "$SECONDS" "$BUDGET" >/dev/null
    fi || { echo "(summary script failed; stages:)"; tee "$OUT/summary.txt" <"$STAGES"; }
}
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STAGES"; summary; }
limit() {  # a stage's deadline: its own default, cut to what the whole budget leaves
    local left=$((BUDGET - SECONDS - RESERVE))
    echo $(( $1 < left ? $1 : left ))
}
torch_ok() {  # the interpreter imports torch (with CUDA unless GPU_CHECK_ALLOW_CPU=1)
    if [ "$ALLOW_CPU" = 1 ]; then
        "$1" -c "import torch" >/dev/null 2>&1
    else
        "$1" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1
    fi
}
asked() { [[ "$ASKED" == *" $1 "* ]] || { echo "(stage $1 not in GPU_CHECK_STAGES)"; false; }; }
have_wheels() { compgen -G "$WHEELS/*.whl" >/dev/null; }
finish() {
    stage "Summary (${SECONDS}s)"
    local n deep
    n=$(find "$OUT" -type f | wc -l)
    deep=$(find "$OUT" -mindepth 1 ! -type f -o -mindepth 3 | head -n 3 | xargs)
    if [ "$n" -gt 8 ] || [ -n "$deep" ]; then
        record out-files "FAILED" 0 "$n files in $OUT (at most 8 come back) ${deep:+; not plain or too deep: $deep}"
    fi
    summary print
    local failed=0
    grep -qv $'\tok\t' "$STAGES" && failed=1
    rm -rf "$WORK"
    if [ $failed = 1 ]; then echo "SOME STAGES FAILED"; exit 1; fi
    echo "all stages ok"
    exit 0
}

# --- 1. setup -----------------------------------------------------------------------------------------
stage "1. setup: interpreter, carried wheels, imports"
t0=$SECONDS
SETUP_LIMIT=$(limit "${GPU_CHECK_SETUP_TIMEOUT:-90}")
NOTE=""
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY="$GPU_CHECK_PYTHON"; NOTE="GPU_CHECK_PYTHON=$PY"
elif have_wheels && torch_ok "$SYSTEM_PYTHON"; then
    PY="$(command -v "$SYSTEM_PYTHON")"; NOTE="$PY with the carried wheels (no index install)"
elif [ -x "$VENV/bin/python" ] && torch_ok "$VENV/bin/python" && "$VENV/bin/python" -c "import retinanet, pytest" >/dev/null 2>&1; then
    PY="$VENV/bin/python"; NOTE="reused $VENV"
else
    echo "no wheels in $WHEELS/: README install (timeout ${SETUP_LIMIT}s): python3 -m venv $VENV; pip install -c constraints.txt -e \".[export,test]\""
    ( "$SYSTEM_PYTHON" -m venv "$VENV" \
      && timeout "$SETUP_LIMIT" "$VENV/bin/python" -m pip install -q --retries 0 --timeout 10 -c constraints.txt -e ".[export,test]" \
      && torch_ok "$VENV/bin/python" ) 2>&1 | tail -n 20
    if [ "${PIPESTATUS[0]}" = 0 ]; then
        PY="$VENV/bin/python"; NOTE="installed into $VENV as the README does"
    elif torch_ok "$SYSTEM_PYTHON"; then
        PY="$(command -v "$SYSTEM_PYTHON")"; NOTE="README install failed (no network?): $PY"
    fi
fi
if [ -z "$PY" ] || ! torch_ok "$PY"; then
    record setup FAILED $((SECONDS - t0)) "no interpreter with torch$([ "$ALLOW_CPU" = 1 ] || echo ' and CUDA') (${PY:-$SYSTEM_PYTHON})"
    finish
fi
SUMMARY_PY="$PY"
if have_wheels; then
    mapfile -t PICKED < <("$PY" benchmarks/gpu_wheels.py "$WHEELS")
    echo "carried wheels for $("$PY" -c 'import sys; print(sys.version.split()[0])'): ${PICKED[*]:-none fits}"
    if [ ${#PICKED[@]} -gt 0 ]; then
        if timeout "$SETUP_LIMIT" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --disable-pip-version-check --target "$SITE" "${PICKED[@]}"; then
            export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
            NOTE="$NOTE; ${#PICKED[@]} wheels into $SITE"
        else
            NOTE="$NOTE; the wheel install FAILED"
        fi
    fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package, installed or not
export MPLBACKEND=Agg
# every module of the package and what the tests use: a missing one fails here, in seconds
timeout 120 "$PY" - <<'EOF'
import importlib, pkgutil, sys
import retinanet
bad = []
for name in ["pytest", "xdist", "pytest_timeout", "pycocotools.cocoeval", "defusedxml"] + sorted(
        m.name for m in pkgutil.walk_packages(retinanet.__path__, "retinanet.") if not m.name.endswith("__main__")):
    try:
        importlib.import_module(name)
    except Exception as err:
        bad.append(f"{name}: {type(err).__name__}: {err}")
print(f"imported retinanet ({retinanet.__file__}) and its modules" if not bad else "DO NOT IMPORT:\n  " + "\n  ".join(bad))
sys.exit(1 if bad else 0)
EOF
rc=$?
case "$NOTE" in *FAILED*) rc=1 ;; esac
[ $rc = 0 ] || NOTE="$NOTE; imports FAILED (gpu_check.log)"
echo "$NOTE"
record setup "$(status_of $rc)" $((SECONDS - t0)) "$NOTE"
[ $rc = 0 ] || finish

# --- 2. versions ---------------------------------------------------------------------------------------
stage "2. versions: driver, GPU, python, torch, optional modules"
t0=$SECONDS
timeout 20 nvidia-smi || echo "nvidia-smi: not available (rc $?)"
VERSIONS=$(timeout "$(limit 60)" "$PY" - <<'EOF'
import importlib, platform, sys
import torch, torchvision
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
missing = []
for name in ("faster_coco_eval", "onnx", "onnxruntime", "onnxscript", "tensorboard", "matplotlib", "tqdm", "yaml"):
    try:
        importlib.import_module(name)
    except Exception as err:
        missing.append(f"{name} ({type(err).__name__})")
print("optional modules that do not import:", ", ".join(missing) or "none")
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, GPU {torch.cuda.is_available()}, "
      f"{len(__import__('os').sched_getaffinity(0))} cores")
EOF
)
rc=$?
echo "$VERSIONS"
record versions "$(status_of $rc)" $((SECONDS - t0)) "$(echo "$VERSIONS" | tail -n 1)"

GPU=1
"$PY" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1 || GPU=0

# --- 3. CUDA tests --------------------------------------------------------------------------------------
if asked cuda-tests; then
T=$(limit "${GPU_CHECK_TEST_TIMEOUT:-130}")
stage "3. pytest -m cuda tests/cuda (deadline ${T}s)"
t0=$SECONDS
if [ "$T" -lt 20 ]; then record cuda-tests "SKIPPED (budget)" 0 "${T}s left"; finish; fi
timeout "$T" "$PY" -m pytest -m cuda tests/cuda -v -rs -p no:cacheprovider --timeout 120 \
    --junitxml="$OUT/pytest_cuda.xml"
rc=$?
record cuda-tests "$(status_of $rc)" $((SECONDS - t0)) "deadline ${T}s"
fi

# --- 4. GPU benchmark ---------------------------------------------------------------------------------------
if asked bench; then
T=$(limit "${GPU_CHECK_BENCH_TIMEOUT:-120}")
stage "4. benchmarks/bench_gpu.py (deadline ${T}s)"
t0=$SECONDS
if [ "$GPU" = 1 ]; then
    BENCH=(--compile --cuda-graphs --sync-debug 20)
else
    BENCH=(--device cpu --tiny --cuda-graphs --sync-debug 2)  # the CUDA-only rows report their error
fi
if [ "$T" -lt 60 ]; then
    record bench "SKIPPED (budget)" 0 "${T}s left"
else
    # rows stop starting 40 s before the deadline (a row takes up to ~30 s), so the table is saved
    timeout "$T" "$PY" benchmarks/bench_gpu.py "${BENCH[@]}" --time-budget $((T - 40)) \
        --json "$OUT/bench_gpu.json" ${GPU_CHECK_BENCH_ARGS:-}
    rc=$?
    record bench "$(status_of $rc)" $((SECONDS - t0)) "deadline ${T}s"
fi
fi

# --- 5. the user's CLI path -------------------------------------------------------------------------------
if asked cli; then
T=$(limit "${GPU_CHECK_CLI_TIMEOUT:-130}")
stage "5. the CLI on the GPU: benchmarks/gpu_cli.py (deadline ${T}s)"
t0=$SECONDS
if [ "$T" -lt 30 ]; then record cli "SKIPPED (budget)" 0 "${T}s left"; finish; fi
if [ "$GPU" = 1 ]; then CLI=(--device cuda); else CLI=(--device cpu --tiny); fi
# the script stops itself (SIGINT to train, then eval and predict) before the deadline
timeout "$T" "$PY" benchmarks/gpu_cli.py "${CLI[@]}" --time-budget $((T - 5)) --train-seconds $((T * 3 / 4 - 20)) \
    --work "$WORK/cli" --json "$OUT/cli.json" ${GPU_CHECK_CLI_ARGS:-}
rc=$?
record cli "$(status_of $rc)" $((SECONDS - t0)) "deadline ${T}s"
fi

finish
