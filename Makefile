# Everything a new user needs: `make run` and `make test`. Only python3 and make are assumed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: run test bench screenshots lint typecheck clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tui-dispatch

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

# The Redis broker against RQ, Dramatiq, Celery, arq and Huey: the peers live in their own
# virtualenv, bench/.peers (not project dependencies); `make bench` skips them without it.
PEERS := bench/.peers
.PHONY: bench-peers
$(PEERS)/.installed: bench/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -r bench/peers/requirements.txt
	touch $@

bench-peers: $(STAMP) $(PEERS)/.installed
	$(PY) -m bench redis_peers

screenshots: $(STAMP)
	$(PY) -m tui_dispatch.screenshots screenshots

lint: $(STAMP)
	$(VENV)/bin/ruff check engine tui_dispatch tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
