# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test check lint typecheck bench clean mosquitto tmux

# setuptools prints an "Editable installation" notice (a UserWarning) on every editable
# install of a flat layout like ours: information, not trouble, so it is not shown.
QUIET_PIP := PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(QUIET_PIP) --upgrade pip
	$(QUIET_PIP) -e ".[test,dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

mosquitto:
	@bash scripts/ensure-mosquitto.sh

# tmux runs the demo in a real terminal of a set size for its screen tests.
tmux:
	@bash scripts/ensure-tmux.sh

# The whole product in one command: simulator, broker, gateway and a live view. The demo
# extra (the embedded amqtt broker) is installed too, for machines without mosquitto.
# Flags: make demo ARGS="--meters 20 --speed 60 --seed 1 --duration 90 --no-mosquitto"
DEMO_STAMP := $(VENV)/.demo-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(DEMO_STAMP): $(STAMP)
	$(QUIET_PIP) -e ".[demo]"
	@rm -f $(VENV)/.demo-*
	@touch $@

demo: $(DEMO_STAMP)
	$(PY) -m prepaid_demo $(ARGS)

test: $(STAMP) mosquitto tmux
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/vulture

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
