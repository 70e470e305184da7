# Oasis: two commands for a newcomer, `make run` and `make test`. Needs Python 3.11 and make.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help run test lint check-migrations clean

help:
	@echo "make run    serve Oasis on http://127.0.0.1:8000 (SQLite, embedded defaults)"
	@echo "make test   run the whole test suite"
	@echo "make lint   ruff, ruff format --check, mypy, import contracts, makemigrations --check"

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Oasis needs Python 3.11, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(STAMP)
	$(PY) manage.py migrate --no-input
	$(PY) manage.py ensure_dev_admin
	$(PY) manage.py devstack

test: $(STAMP)
	OASIS_ENV=test $(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	OASIS_ENV=test $(VENV)/bin/mypy .
	OASIS_ENV=test $(VENV)/bin/lint-imports
	OASIS_ENV=test $(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) var/*.sqlite3* .pytest_cache .mypy_cache .ruff_cache
