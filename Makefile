# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates or refreshes .venv and installs what the project needs; nothing else is assumed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dalidr demo --out runs/demo

test: $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check dalidr kernels store bench tests
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) bench/replay.py

clean:
	rm -rf $(VENV) runs build *.egg-info .mypy_cache
