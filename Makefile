# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install demo test bench gpu-wheels gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[export,test]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its test and export extras

demo: $(STAMP)  ## synthetic data -> a short training -> eval -> predictions (2-core CPU with bf16: about 4.5 minutes)
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

gpu-check:  ## on a GPU machine: install (or use the system torch), CUDA tests, GPU benchmark; results in $$OUT or gpu_check_out/
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) demo .pytest_cache
