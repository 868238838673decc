# The two commands the README promises: `make dashboard` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test dashboard lint bench screenshots clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# reinstall only when the project's declared dependencies change
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

dashboard: $(STAMP)
	$(BIN)/python -m dashboard.serve

lint: $(STAMP)
	$(BIN)/ruff check qcore board_agent dashboard tests bench
	$(BIN)/mypy qcore board_agent

# refresh the README's screenshots from a real browser run of the e2e tests
screenshots: $(STAMP)
	QLAB_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/e2e

# TensorFlow's native log lines are silenced (qcore.quiet); `make bench V=1` shows them
bench: $(STAMP)
	for f in bench/*.py; do QLAB_VERBOSE=$(V) $(BIN)/python -m qcore.quiet $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
