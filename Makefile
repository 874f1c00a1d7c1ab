# The two commands of a fresh machine:
#   make demo   sets up .venv when missing and runs the whole pipeline on the embedded default
#   make test   sets up .venv when missing and runs the test suite (what CI runs)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Benchmark files: $SDLIB_DATA_DIR if set, else ../shared/data when it exists (tests, CI).
SDLIB_DATA_DIR ?= $(if $(wildcard ../shared/data/mbpp.jsonl),$(abspath ../shared/data),$(HOME)/.cache/sdlib/data)
export SDLIB_DATA_DIR
PARAMS ?= params/smoke.yaml

.PHONY: demo test browser lint format bench rate clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned first: a plain `torch` would pull a multi-GB CUDA build on CPU machines
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c <(echo torch==2.13.0) -e ".[train,notebooks,bench,dev]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/sdlib run $(PARAMS)

test: $(VENV)/.installed browser
	$(VENV)/bin/ruff check sdlib tests benchmarks notebooks
	$(PY) -m pytest -q -p no:cacheprovider

# Headless Chromium for tests/test_browser.py (Debian packages), installed when missing.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		echo "installing chromium and chromium-driver (the raters' page test drives a real browser)"; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check sdlib tests benchmarks notebooks
	$(VENV)/bin/ruff format --check sdlib tests benchmarks notebooks

format: $(VENV)/.installed
	$(VENV)/bin/ruff format sdlib tests benchmarks notebooks
	$(VENV)/bin/ruff check --fix sdlib tests benchmarks notebooks

# Serve the raters' page: open http://localhost:8866/?run=smoke&rater=rater1
rate: $(VENV)/.installed
	$(VENV)/bin/voila notebooks/rate.ipynb --no-browser --port=8866

bench: $(VENV)/.installed
	$(PY) benchmarks/sandbox_speed.py

clean-venv:
	rm -rf $(VENV)
