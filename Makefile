# The two set-up commands of the README. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first, pinned to the CPU build these machines carry; the package itself only asks torch>=2.4
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m multimodaltransformer demo --out runs/demo $(DEMO_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -rs

clean:
	rm -rf runs .pytest_cache
