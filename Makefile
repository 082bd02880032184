# make demo: set up on a fresh Debian machine and train Fashion-MNIST at B=256 and B=4096 (emulated).
# make test: set up and run the test suite; make test-fast: the unit tests only (no training).
# make bench: engine-vs-bare throughput and all-reduce costs on this machine (runs/bench).
# make results: run the Fashion-MNIST sweeps and write their report to docs/results/fashion-mnist.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test test-fast results bench imports clean

setup: $(STAMP) $(FMNIST)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: setup
	$(BIN)/python recipes/fashion_mnist.py --global-batch 256 --micro-batch 256 --run-dir runs/demo-B256 --resume
	$(BIN)/python recipes/fashion_mnist.py --global-batch 4096 --micro-batch 256 --warmup gradual \
		--run-dir runs/demo-B4096 --resume
	$(BIN)/largebatch compare runs/demo-B256 runs/demo-B4096 --plot runs/demo.png

# The Fashion-MNIST sweeps (two 1-thread jobs at a time on a 2-core CPU), the noise scale, and the report.
SWEEPS := batch_size warmup batchnorm weight_decay lr_sensitivity beyond
JOBS ?= 2
results: setup
	for s in $(SWEEPS); do $(BIN)/largebatch sweep recipes/sweeps/$$s.yaml --out runs/sweeps --jobs $(JOBS) || exit 1; done
	mkdir -p docs/results/fashion-mnist
	TQDM_DISABLE=1 $(BIN)/largebatch noise --epochs 2 --run-dir runs/noise | tee docs/results/fashion-mnist/noise.txt
	$(BIN)/largebatch report runs/sweeps --out docs/results/fashion-mnist

# Engine vs a bare PyTorch loop, all-reduce costs and the planner's calibration (runs/bench/).
bench: setup
	$(BIN)/python benchmarks/run.py --out runs/bench

# Two test files at a time: most of the suite's time is processes starting and importing torch, which a
# second core overlaps. Each file stays on one worker, so a module's fixtures (tests/test_zero.py's runs) run once.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The library's import graph (docs/imports.svg), drawn by pydeps with Debian's graphviz.
imports: setup
	command -v dot >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq graphviz)
	$(BIN)/pip install -q pydeps
	$(BIN)/pydeps largebatch --only largebatch --no-show --rankdir LR -T svg -o docs/imports.svg

clean:
	rm -rf runs $(VENV)
