# The two commands: `make demo` and `make test`. Each creates .venv when missing and installs what
# it needs; the install is skipped when pyproject.toml has not changed since the last one.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
WORKDIR ?= runs/demo

.PHONY: demo test install clean-venv bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-core: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@ $(VENV)/.installed-core

install: $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(VENV)/bin/fewshot-jax demo --workdir $(WORKDIR)

test: $(VENV)/.installed-dev
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

bench: $(VENV)/.installed-dev
	$(VENV)/bin/python benchmarks/synthetic.py
	$(VENV)/bin/python benchmarks/prep.py
	$(VENV)/bin/python benchmarks/input.py --workers 0 1 2
	$(VENV)/bin/python benchmarks/record_reader.py
	$(VENV)/bin/python benchmarks/inference.py
	$(VENV)/bin/python benchmarks/conv_grads.py
	$(VENV)/bin/python benchmarks/train_step.py
	$(VENV)/bin/python benchmarks/profile_step.py
	$(VENV)/bin/python benchmarks/memory_estimate.py

clean-venv:
	rm -rf $(VENV)
