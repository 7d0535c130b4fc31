# newsmon: every target sets itself up (virtualenv + install) on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-db lint bench airflow db-stop clean

help:
	@echo "make demo    - serve the bundled sample feeds locally and run one full pass into PostgreSQL"
	@echo "make test    - run the test suite (embedded PostgreSQL unless NEWSMON_TEST_DATABASE_URL is set)"
	@echo "make bench   - run the benchmarks and print the results"
	@echo "make lint    - ruff"
	@echo "make airflow - airflow standalone with our DAGs on http://localhost:8080"
	@echo "make db-stop - stop the embedded PostgreSQL"

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/newsmon demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

airflow: $(STAMP)
	$(BIN)/newsmon airflow-standalone

db-stop: $(STAMP)
	$(BIN)/newsmon db stop

clean:
	-$(BIN)/newsmon db stop
	rm -rf $(VENV) .newsmon .airflow
