# make run   - the system on embedded defaults: private Redis, SQLite, worker, beat, Flower
# make test  - lint, type-check and the test suite against real servers
# make bench - the benchmarks (figures and ratios against a baseline of the same run)
# make history - a recorded history of minutes under faults, checked (HISTORY_MINUTES=12)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench history clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found: $$($(PYTHON) --version))"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); \
		else echo "python3 -m venv failed: install python3-venv (sudo apt-get install python3-venv)"; exit 1; fi; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check cache tasks tests benchmarks examples celeryconfig.py
	$(VENV)/bin/ruff format --check cache tasks tests benchmarks examples celeryconfig.py
	$(VENV)/bin/mypy

test: $(STAMP) lint
	scripts/with-redis.sh $(PY) -m pytest -q

bench: $(STAMP)
	scripts/with-redis.sh $(PY) -m benchmarks

HISTORY_MINUTES ?= 12
history: $(STAMP)
	$(PY) -m benchmarks.history --minutes $(HISTORY_MINUTES) --dir .history

run: $(STAMP)
	scripts/with-redis.sh $(PY) -m tasks.ops.cli run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .history
