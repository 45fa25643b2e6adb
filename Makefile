# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install demo test bench gpu-wheels gpu-image-venv gpu-dry-run gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[export,test]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its test and export extras

demo: $(STAMP)  ## synthetic data -> a short training -> eval -> predictions, in a 5-minute budget (retinanet demo --time)
	$(BIN)/retinanet demo --out demo

test: $(STAMP)  ## the whole test suite (CPU-sized, parallel on the machine's cores)
	$(BIN)/python -m pytest -n auto --timeout 900 -q tests

bench: $(STAMP)  ## model, loss/post-processing and data-loading benchmarks (see BENCHMARKS.md)
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_heads.py
	$(BIN)/python benchmarks/bench_data.py

# The packages that `retinanet` and its tests import and the lent GPU machine's image lacks (it has
# torch, torchvision, numpy, pillow, matplotlib, tqdm, pyyaml, pytest + plugins, onnx*; BENCHMARKS.md
# "GPU"). Their wheels travel with the working tree (carry: [".whl"]); versions from constraints.txt.
GPU_PY     ?= 3.12
GPU_WHEELS ?= defusedxml pycocotools faster-coco-eval
GPU_PLATFORMS = manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64

gpu-wheels:  ## download into .whl/ the manylinux x86_64 wheels (CPython $(GPU_PY); GPU_PY=3.11 for another) the GPU image lacks
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
	    $(addprefix --platform ,$(GPU_PLATFORMS)) -c constraints.txt -d .whl $(GPU_WHEELS)
	@ls -l .whl/*.whl

# The dry run: an interpreter shaped like the GPU image (CPython 3.12, torch 2.11.0, torchvision 0.26.0,
# the image's other packages, none of defusedxml / pycocotools / faster-coco-eval), then the whole
# check on the CPU from .whl/ alone with no package index. PyPI's torch 2.11.0 for Linux is the CUDA 13
# build (its nvidia-* libraries included: about 5 GB, a one-off); it runs on a CPU.
GPU_IMAGE_PYTHON ?= python3.12
GPU_IMAGE_VENV   ?= /tmp/retinanet-gpu-image
GPU_IMAGE_PKGS    = torch==2.11.0 torchvision==0.26.0 numpy pillow matplotlib tqdm pyyaml pytest pytest-timeout \
                    pytest-xdist onnx onnxruntime onnxscript

gpu-image-venv:  ## $(GPU_IMAGE_VENV): CPython 3.12 + torch 2.11 + the GPU image's packages, without the three it lacks
	test -x $(GPU_IMAGE_VENV)/bin/python || $(GPU_IMAGE_PYTHON) -m venv $(GPU_IMAGE_VENV)
	$(GPU_IMAGE_VENV)/bin/python -m pip install -q $(GPU_IMAGE_PKGS)

gpu-dry-run:  ## the GPU check on this CPU in $(GPU_IMAGE_VENV), from .whl/ alone, no index; results in gpu_check_out/
	@test -n "$$(ls .whl/*.whl 2>/dev/null)" || { echo "no wheels in .whl/: make gpu-wheels first"; exit 2; }
	@$(GPU_IMAGE_VENV)/bin/python -c "import importlib.util as u, sys; m = [n for n in ('defusedxml', 'pycocotools', 'faster_coco_eval') if u.find_spec(n)]; sys.exit(f'$(GPU_IMAGE_VENV) has {m}: not the GPU image (make gpu-image-venv GPU_IMAGE_VENV=<new folder>)' if m else 0)"
	OUT=gpu_check_out GPU_CHECK_ALLOW_CPU=1 GPU_CHECK_PYTHON=$(GPU_IMAGE_VENV)/bin/python \
	    GPU_CHECK_SYSTEM_PYTHON=$(GPU_IMAGE_VENV)/bin/python PIP_NO_INDEX=1 $(GPU_DRY_TIMES) bash benchmarks/gpu_check.sh

# The deadlines are the H200's; on a loaded 2-core CPU each of the check's ~10 Python processes can
# spend 10-40 s importing torch, so the dry run gets more time (it checks the plumbing, not the speed).
GPU_DRY_TIMES ?= GPU_CHECK_BUDGET=1200 GPU_CHECK_TEST_TIMEOUT=200 GPU_CHECK_BENCH_TIMEOUT=300 GPU_CHECK_CLI_TIMEOUT=480

gpu-check:  ## on a GPU machine: install (or use the system torch), CUDA tests, GPU benchmark; results in $$OUT or gpu_check_out/
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) demo .pytest_cache
