# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs triptych, runs configs/demo.yaml into runs/demo/
#   make test   creates .venv, installs triptych with test extras, runs the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SHARED := $(abspath ../shared)
# Offline data beside the project (see ../shared/README.md); an online user needs none.
export TRIPTYCH_MIRROR ?= $(if $(wildcard $(SHARED)/datasets),$(SHARED)/datasets,)
export TRIPTYCH_WEIGHTS ?= $(if $(wildcard $(SHARED)/weights),$(SHARED)/weights,)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/triptych run configs/demo.yaml --out runs/demo --overwrite

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
