# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# the pure-Python parts that mypy checks (the analyzer, data and orchestration; not kernels)
TYPED  := cnncli/spec cnncli/layers cnncli/analysis cnncli/render cnncli/cli cnncli/training cnncli/sliding \
          cnncli/engine/*.py cnncli/errors.py cnncli/config.py cnncli/files.py

.PHONY: install dev demo test lint bench pictures clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	# bytecode now, so every command starts without compiling cnncli's sources (an editable
	# install writes none, and PYTHONDONTWRITEBYTECODE keeps imports from writing it)
	$(BIN)/python -m compileall -q cnncli
	# no kernel compiling here: a run compiles the kernels it uses the first time (numba
	# caches them on disk); `cnncli warmup` does it ahead of time for who wants that
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	# Pillow and matplotlib: the tests open the pictures the commands write; mpi: mpi4py and
	# the mpich wheel (its mpiexec lands in $(BIN)), so the MPI tests run
	$(BIN)/pip install -q -e '.[dev,images,plot,mpi]'
	# PyTorch is a test/benchmark reference only: the CPU build that lies on this disk
	$(BIN)/pip install -q torch==2.13.0 torchinfo
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

demo: install
	$(BIN)/cnncli check vgg16
	# 10 classes; 99% validation accuracy after 3 epochs (16 s on 2 cores of an AMD EPYC on
	# 2026-11-22; on the 2-core Xeon VM of 2026-11-29: 41 s compiling this net's kernels in
	# two processes before the first run's first step on a machine, then about 10 s an epoch)
	$(BIN)/cnncli train cifar_small --epochs 3 --out runs/demo --overwrite

test: dev
	# every kernel compiled first (one process per core), as a machine image would: the tests
	# then time and read runs whose first step is not a compile
	$(BIN)/cnncli warmup --float64
	$(BIN)/python -m pytest -q
	# kernel bodies once more as plain Python, on the smallest cases
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -q -k small tests/test_kernels_conv.py \
	  tests/test_kernels_pool.py tests/test_kernels_norm.py tests/test_kernels_winograd.py \
	  tests/test_kernels_elementwise.py tests/test_kernels_microkernel.py

lint: dev
	$(BIN)/ruff check cnncli tests bench
	$(BIN)/mypy $(TYPED)

# The figures behind BENCHMARKS.md (each script prints its table; see BENCHMARKS.md).
bench: dev
	$(BIN)/python bench/bench_check.py
	$(BIN)/python bench/bench_conv.py
	$(BIN)/python bench/bench_winograd.py
	$(BIN)/python bench/bench_step.py
	$(BIN)/python bench/bench_nets.py
	$(BIN)/python bench/bench_nets.py --mode infer
	$(BIN)/python bench/bench_algo.py
	$(BIN)/python bench/bench_fc_head.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_memory.py
	$(BIN)/python bench/bench_slide.py
	$(BIN)/python bench/bench_distributed.py

# The README's pictures (docs/img/), made by the commands themselves: two drawings, then a
# short run on the built-in dataset for the curves, the filters and one image's activations.
pictures: dev
	$(BIN)/cnncli draw cifar_small -o docs/img/net.svg
	$(BIN)/cnncli draw resnet18 --vertical -o docs/img/resnet18.svg
	$(BIN)/cnncli train cifar_small --epochs 8 --train-size 4000 --schedule cosine --lr 0.02 \
	  --threads 2 --out runs/pictures --overwrite --quiet
	$(BIN)/cnncli plot runs/pictures -o docs/img/curves.svg
	$(BIN)/cnncli filters runs/pictures/best.npz -o docs/img/filters.png
	# one image of the built-in dataset (an "x-cross", unseen in training: another seed)
	$(BIN)/python -c "from PIL import Image; from cnncli.training.data import synthetic_shapes as s; \
	  d = s(10, seed=3); Image.fromarray(d.x[list(d.y).index(6)]).save('docs/img/sample.png')"
	$(BIN)/cnncli activations cifar_small docs/img/sample.png --weights runs/pictures/best.npz \
	  -o docs/img/activations.png

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
