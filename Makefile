# vmid: `make run` and `make test` work on a fresh Debian 12 machine; they install what they need.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# QEMU and its firmware; tests run real QEMU (TCG) to prove the planned command lines start.
APT_PACKAGES := qemu-system-x86 qemu-utils ovmf

.PHONY: setup packages lint test run clean golden

setup: packages $(VENV)/.installed

packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root, or: apt-get install" $$missing; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "vmid needs Python 3.11 or newer"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

lint: setup
	$(BIN)/ruff check vmid tests bench
	$(BIN)/ruff format --check vmid tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The daemon is not there yet: `run` shows what works today on the shipped example.
run: setup
	@echo "The vmid daemon is not implemented yet. What works today, on conf/instances/testvmi.yaml:"
	@echo; echo "$$ vmid validate conf/instances/testvmi.yaml"
	@$(BIN)/vmid validate --config conf/vmid.yaml conf/instances/testvmi.yaml
	@echo; echo "$$ vmid render conf/instances/testvmi.yaml"
	@$(BIN)/vmid render --config conf/vmid.yaml conf/instances/testvmi.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Rewrite tests/golden/*.args from the current planner; review the diff before committing.
golden: setup
	UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/test_golden.py
