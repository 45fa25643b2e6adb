# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install demo test bench gpu-check clean

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

gpu-check:  ## on a GPU machine: install (or use the system torch), CUDA tests, GPU benchmark; results in $$OUT or gpu_check_out/
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) demo .pytest_cache
