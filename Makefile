# make run     - the system on embedded defaults: private Redis, SQLite, worker, beat, Flower
# make test    - lint, type-check and the test suite against real servers
# make bench   - the benchmarks (figures and ratios against a baseline of the same run)
# make lock    - re-resolve uv.lock after a change to pyproject.toml, and re-export it
# make upgrade - the newest versions in range, tested in a venv of their own (.upgrade/)
# make lowest  - the lowest versions pyproject.toml allows, tested the same way (.lowest/)
# make history - a recorded history of minutes under faults, checked (HISTORY_MINUTES=12)
#
# Installs are exact: requirements/*.txt are exported from uv.lock with a hash for every
# file, installed by plain pip with --require-hashes and --no-deps (nothing unlocked can
# slip in), then the project itself with --no-deps. `make run` installs the runtime and
# Flower only; `make test` adds every extra and the dev tools.

PYTHON ?= python3
VENV ?= .venv
# Where the exported requirements are read from: `make upgrade` points it elsewhere.
REQS ?= requirements
PY := $(VENV)/bin/python
PIP_LOCKED := $(PY) -m pip install --quiet --require-hashes --no-deps
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp

# uv resolves and exports the lock; pinned so that every machine writes the same files.
UV_VERSION := 0.13.9
TOOLS := .venv-tools
UV := $(TOOLS)/bin/uv
EXPORT := export --quiet --frozen --no-emit-project --no-dev --format requirements-txt

.PHONY: run test lint bench history lock export upgrade lowest clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found: $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); \
		else echo "python3 -m venv failed: install python3-venv (sudo apt-get install python3-venv)"; exit 1; fi; }

$(RUN_STAMP): $(REQS)/build.txt $(REQS)/run.txt pyproject.toml | $(PY)
	$(PIP_LOCKED) -r $(REQS)/build.txt
	$(PIP_LOCKED) -r $(REQS)/run.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

$(DEV_STAMP): $(REQS)/build.txt $(REQS)/dev.txt pyproject.toml | $(PY)
	$(PIP_LOCKED) -r $(REQS)/build.txt
	$(PIP_LOCKED) -r $(REQS)/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check cache tasks tests benchmarks examples celeryconfig.py
	$(VENV)/bin/ruff format --check cache tasks tests benchmarks examples celeryconfig.py
	$(VENV)/bin/mypy

test: $(DEV_STAMP) lint
	scripts/with-redis.sh $(PY) -m pytest -q

bench: $(DEV_STAMP)
	scripts/with-redis.sh $(PY) -m benchmarks

HISTORY_MINUTES ?= 12
history: $(DEV_STAMP)
	$(PY) -m benchmarks.history --minutes $(HISTORY_MINUTES) --dir .history

run: $(RUN_STAMP)
	scripts/with-redis.sh $(PY) -m tasks.ops.cli run

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# The exports of a lock in directory $(1) into $(1)/requirements: run (make run), image
# (the Dockerfile: the services' extras), dev (make test) and the build tools.
define export_lock
	mkdir -p $(1)/requirements
	$(UV) --directory $(1) $(EXPORT) --extra flower -o requirements/run.txt
	$(UV) --directory $(1) $(EXPORT) --extra flower --extra postgres -o requirements/image.txt
	$(UV) --directory $(1) $(EXPORT) --all-extras -o requirements/dev.txt
	$(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		$(2) requirements/build.in -o $(1)/requirements/build.txt
endef

lock: $(UV)
	$(UV) lock
	$(call export_lock,.)

export: $(UV)
	$(call export_lock,.)

# A resolution of pyproject.toml's ranges in directory $(1) with uv options $(2), installed
# in venv $(3); the checked-in lock stays as it is.
define trial_lock
	rm -rf $(1) $(3) && mkdir -p $(1)/requirements
	cp pyproject.toml uv.lock $(1)/ && cp requirements/build.in $(1)/requirements/
	$(UV) --directory $(1) lock --quiet $(2)
	$(call export_lock,$(1),$(2))
	$(MAKE) VENV=$(3) REQS=$(1)/requirements $(3)/.dev-stamp
endef

upgrade: $(UV)
	$(call trial_lock,.upgrade,--upgrade,.venv-upgrade)
	$(MAKE) VENV=.venv-upgrade REQS=.upgrade/requirements test
	@echo "The newest versions in range pass. To adopt them:"
	@echo "  cp .upgrade/uv.lock uv.lock && cp .upgrade/requirements/*.txt requirements/"

# The tests only: type-checking is held to the locked versions, whose annotations the
# code is written against (redis-py, for one, typed far less before 8.x).
lowest: $(UV)
	$(call trial_lock,.lowest,--resolution lowest-direct,.venv-lowest)
	scripts/with-redis.sh .venv-lowest/bin/python -m pytest -q
	@echo "The lowest versions pyproject.toml allows pass the tests: its lower bounds hold."

clean:
	rm -rf $(VENV) $(TOOLS) .venv-upgrade .venv-lowest .upgrade .lowest \
		.mypy_cache .ruff_cache .pytest_cache .history
