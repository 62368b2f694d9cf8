# Two commands do everything on a fresh machine: `make run` (train LeNet on Fashion-MNIST) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cnnlab-installed

.PHONY: run test setup data system-deps lint bench clean

run: setup
	$(BIN)/cnnlab train

test: setup system-deps
	$(BIN)/python -m pytest -q

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

# Every table of the README's Performance section, each from the run that prints it (about three hours on 2 cores; the GPU one is benchmarks/gpu.sh).
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
	rm -rf $(VENV) build *.egg-info src/*.egg-info
