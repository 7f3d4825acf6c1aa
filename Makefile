# Two commands on a fresh machine with Python 3.11 and make: `make run` and `make test`.
# Both install once into .venv (a stamp file records it) and convert the embedded model once into the cache.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_STAMP := $(VENV)/.model-ready
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

PEERS_STAMP := $(VENV)/.peers-ready

.PHONY: install lock model peers browser postgres run test lint format bench bench-gpu train eval clean

install: $(STAMP)

# torch first (a range resolved with no torch present would pull a multi-GB CUDA build), then the project with every
# extra, at the exact versions of the lock (constraints.txt). The embedded model's GGUF is fetched by `prepare`.
$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Rewrite the lock from the dev venv after changing pyproject.toml's ranges (then `make install` and test).
lock: install
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v -i -e '^future-lens' -e '^-e ' \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

# Peers' own code for the interoperability tests: the tuned-lens package, without its dependencies (its `nn` module
# needs only torch and transformers), in a folder of its own that only those tests put on their path.
peers: $(PEERS_STAMP)

$(PEERS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/peers tuned-lens==0.2.0
	touch $(PEERS_STAMP)

model: $(MODEL_STAMP)

$(MODEL_STAMP): $(STAMP)
	$(VENV)/bin/future-lens prepare
	touch $(MODEL_STAMP)

run: model
	$(VENV)/bin/future-lens serve --host 127.0.0.1 --port 8000

# The browser tests drive Debian's Chromium: installed here when missing (as root, with apt-get), else they skip
# (and fail when CI is set).
CHROMIUM := /usr/bin/chromium

browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser tests"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "warning: installing chromium failed: browser tests will be skipped (fail with CI set)"; \
	else \
		echo "warning: no $(CHROMIUM) and no root apt-get to install it: browser tests will be skipped (apt-get install -y chromium)"; \
	fi

# The PostgreSQL store and replica tests start a throwaway server from Debian's binaries
# (/usr/lib/postgresql/<version>/bin): installed here when missing (as root, with apt-get), else those tests skip (and
# fail when CI is set).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing postgresql for the store tests"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		echo "warning: installing postgresql failed: PostgreSQL tests will be skipped (fail with CI set)"; \
	else \
		echo "warning: no PostgreSQL server binaries and no root apt-get to install them: PostgreSQL tests will be skipped (apt-get install -y postgresql)"; \
	fi

test: model peers browser postgres
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check future_lens app tests benchmarks
	$(VENV)/bin/ruff format --check future_lens app tests benchmarks

format: install
	$(VENV)/bin/ruff format future_lens app tests benchmarks
	$(VENV)/bin/ruff check --fix future_lens app tests benchmarks

bench: model
	$(PY) benchmarks/grid.py

# On a CUDA machine (a CUDA build of torch in the venv): the engine's equivalence tests on the GPU, then the benchmark
# at GPT-J-6B's real shape with random weights (no download) in bf16 and fp16.
bench-gpu: model
	FUTURE_LENS_TEST_DEVICE=cuda $(PY) -m pytest -q tests/test_engine.py
	$(PY) benchmarks/grid.py --synthetic gpt-j-6b --device cuda --dtypes bfloat16 float16

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
