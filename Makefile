# Two commands set up a fresh machine: `make demo` runs the study's demo grid, `make test` the tests.
# Both create the virtual environment (.venv) when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export RAY_USAGE_STATS_ENABLED := 0

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(PY) -m pip install --quiet -e ".[test]" > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(PY) -c "import torch, ray, transformers, moto, pytest"
	touch $@

.PHONY: demo test
demo: $(VENV)/.installed
	$(PY) -m orchestrator.run grid --profile demo

test: $(VENV)/.installed
	bash tests/install_browser.sh $(VENV)/browser.log  # chromium for the HTML report's test, where missing
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
