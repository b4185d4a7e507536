# Two commands a new user needs (both idempotent: a second run reuses .venv):
#   make demo   - set up .venv and train the demo (2 DeepSpeed workers on an embedded local Ray)
#   make test   - set up .venv with the test extras and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
# constraints.txt pins torch to the CPU wheel (an unpinned torch pulls a multi-GB CUDA build).
INSTALL = $(PIP) install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(INSTALL) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(INSTALL) -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/raydeep train configs/digits-lt.yaml

test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest
