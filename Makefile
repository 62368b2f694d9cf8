# Two commands do everything on a fresh machine: `make run` (train LeNet on Fashion-MNIST) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cnnlab-installed

.PHONY: run test docs setup data system-deps lint bench clean

run: setup
	$(BIN)/cnnlab train

# The suite, then the documentation site: a broken link, reference or docstring section fails the test.
test: setup system-deps
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory docs

# The site into site/ (mkdocs.yml; --strict: any warning is an error). `$(BIN)/mkdocs serve` previews it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

setup: $(STAMP) data

# torch is pinned to the CPU wheel this kind of machine keeps on disk; an unpinned torch pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

data: $(STAMP)
	@bash scripts/get-data.sh $(BIN)/cnnlab

# Headless Chromium for the HTML report test (Debian's package); skipped quietly where apt is unavailable.
system-deps:
	@bash scripts/get-chromium.sh

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts

# Every table of docs/performance.md, each from the run that prints it (about three hours on 2 cores; the GPU one is benchmarks/gpu.sh).
bench: setup
	$(BIN)/python benchmarks/ops.py
	$(BIN)/python benchmarks/data.py --repeats 3
	$(BIN)/python benchmarks/train.py --model lenet --epochs 10
	$(BIN)/python benchmarks/train.py --model lenet-relu --epochs 3
	$(BIN)/python benchmarks/train.py --model resnet18-small --max-steps 10 --epochs 2
	$(BIN)/python benchmarks/train.py --model resnet18 --max-steps 8 --epochs 2 --no-plain
	$(BIN)/python benchmarks/train.py --techniques
	$(BIN)/python benchmarks/fast.py
	$(BIN)/python benchmarks/zoo.py --accuracy --json benchmarks/results/zoo.json
	$(BIN)/python benchmarks/imagefolder.py
	$(BIN)/python benchmarks/time_to_accuracy.py

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info
