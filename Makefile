# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# the pure-Python parts that mypy checks (the analyzer, data and orchestration; not kernels)
TYPED  := cnncli/spec.py cnncli/shapes.py cnncli/stats.py cnncli/render.py cnncli/catalog.py \
          cnncli/cli.py cnncli/cli_engine.py cnncli/cli_memory.py cnncli/cli_train.py \
          cnncli/cli_slide.py cnncli/memory.py cnncli/measure.py cnncli/gradcheck.py \
          cnncli/network.py cnncli/layers.py cnncli/profile.py cnncli/warmup.py cnncli/data.py \
          cnncli/optim.py cnncli/train.py cnncli/checkpoint.py cnncli/convert.py cnncli/slide.py \
          cnncli/inplace.py cnncli/config.py cnncli/distributed.py

.PHONY: install dev demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	# bytecode now, so every command starts without compiling cnncli's sources (an editable
	# install writes none, and PYTHONDONTWRITEBYTECODE keeps imports from writing it)
	$(BIN)/python -m compileall -q cnncli
	# compile the engine's kernels once; numba caches them, so `cnncli train` starts at once
	$(BIN)/cnncli warmup
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	# mpi: mpi4py and the mpich wheel (its mpiexec lands in $(BIN)), so the MPI tests run
	$(BIN)/pip install -q -e '.[dev,mpi]'
	# PyTorch is a test/benchmark reference only: the CPU build that lies on this disk
	$(BIN)/pip install -q torch==2.13.0 torchinfo
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

demo: install
	$(BIN)/cnncli check vgg16
	# 10 classes; 99% validation accuracy after 3 epochs, ~16 s on 2 quiet cores
	$(BIN)/cnncli train cifar_small --epochs 3 --out runs/demo --overwrite

test: dev
	$(BIN)/python -m pytest -q
	# kernel bodies once more as plain Python, on the smallest cases
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -q -k small tests/test_kernels_conv.py \
	  tests/test_kernels_pool.py tests/test_kernels_norm.py

lint: dev
	$(BIN)/ruff check cnncli tests bench
	$(BIN)/mypy $(TYPED)

# The figures behind BENCHMARKS.md (each script prints its table; see BENCHMARKS.md).
bench: dev
	$(BIN)/python bench/bench_check.py
	$(BIN)/python bench/bench_conv.py
	$(BIN)/python bench/bench_step.py
	$(BIN)/python bench/bench_fc_head.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_memory.py
	$(BIN)/python bench/bench_slide.py
	$(BIN)/python bench/bench_distributed.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
