# The two commands the README promises: `make dashboard` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the exact versions the suite passed with (`make lock` refreshes it)
CONSTRAINTS := constraints.txt

.PHONY: setup test dashboard lint bench screenshots clean lock

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# reinstall only when the project's declared dependencies or their pinned versions change
$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

# re-resolve the newest versions pyproject.toml allows and pin them; run `make test`, then commit constraints.txt
lock: | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	{ echo "# pip constraints: the versions the test suite passed with. Refresh with make lock (then make test)."; \
	  $(BIN)/pip freeze --exclude-editable --exclude qlab; } > $(CONSTRAINTS)
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

dashboard: $(STAMP)
	$(BIN)/python -m dashboard.serve

lint: $(STAMP)
	$(BIN)/ruff check qcore board_agent dashboard tests bench
	$(BIN)/mypy qcore board_agent

# refresh the README's screenshots: a MobileNetV2-sized session through a real server, in headless Chromium
screenshots: $(STAMP)
	QLAB_MOBILENET=1 QLAB_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/e2e/test_tour_mnv2.py

# TensorFlow's native log lines are silenced (qcore.quiet); `make bench V=1` shows them
bench: $(STAMP)
	for f in bench/*.py; do QLAB_VERBOSE=$(V) $(BIN)/python -m qcore.quiet $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
