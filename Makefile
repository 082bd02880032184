# make demo: set up on a fresh Debian machine and train Fashion-MNIST at B=256 and B=1024 (emulated), side by side.
# make test: set up and run the test suite; make test-fast: the unit tests only (no training).
# make bench: engine-vs-bare throughput and all-reduce costs on this machine (runs/bench).
# make gpu-check: the prepared one-GPU check, under 8 minutes (runs/gpu_check); without a GPU, its tiny CPU version.
# make results: the Fashion-MNIST sweeps at 10 epochs and their report (docs/results/fashion-mnist);
# make results-60-epochs: Figure 1 and Table 1 at 60 epochs, 5 seeds (docs/results/fashion-mnist-60-epochs).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo demo-check test test-fast results results-6-epochs results-60-epochs bench gpu-check imports clean

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

# The demo's pair, chosen on 5 seeds (recipes/sweeps/demo.yaml, docs/results/demo): the baseline B = 256 and
# B = 1024, 4x larger, emulated by 4 accumulation steps of 256, 30 epochs, side by side, one thread each (two
# one-thread runs beat one after the other on 2 cores); then the table, the curves and one verdict line with
# the pair's spread over its 5 seeds and the other seed pairs' tally (docs/results/demo/check.json).
DEMO := recipes/fashion_mnist.py --epochs 30 --micro-batch 256 --resume
demo: setup
	mkdir -p runs
	@echo "B = 256 trains in the background (log: runs/demo-B256.log), B = 1024 here: about 13 minutes on 2 cores."
	OMP_NUM_THREADS=1 $(BIN)/python $(DEMO) --global-batch 256 --run-dir runs/demo-B256 > runs/demo-B256.log 2>&1 & \
	OMP_NUM_THREADS=1 $(BIN)/python $(DEMO) --global-batch 1024 --run-dir runs/demo-B1024; large=$$?; \
	wait $$! || { tail -n 3 runs/demo-B256.log; exit 1; }; exit $$large
	$(BIN)/largebatch compare runs/demo-B256 runs/demo-B1024 --plot runs/demo.png --seeds docs/results/demo/check.json

# The demo's verdict on 8 seed pairs other than the 5 it was chosen on (their records: docs/results/demo),
# under each instruction set this machine offers (benchmarks/demo_check.py; hours on 2 cores, resumable; each
# finished run's record is kept in docs/results/demo/check/<isa>): docs/results/demo/check.md and check.json.
# To redo the choice itself: largebatch sweep recipes/sweeps/demo.yaml, then demo_check.py --runs runs/sweeps.
demo-check: setup
	$(BIN)/python benchmarks/demo_check.py --jobs $(JOBS)

# The Fashion-MNIST evidence (two 1-thread jobs at a time on a 2-core CPU): the epoch budget, Figure 1 at it,
# the paper's ablations at the edge of its flat region, the noise scale, and the report. A stopped
# `make results` resumes where it was.
RESULTS := budget figure1 edge_warmup edge_lr edge_lr_scaling edge_zero_gamma edge_bn edge_weight_decay edge_beyond
JOBS ?= 2
results: setup
	for s in $(RESULTS); do $(BIN)/largebatch sweep recipes/sweeps/$$s.yaml --out runs/sweeps --jobs $(JOBS) || exit 1; done
	mkdir -p docs/results/fashion-mnist
	TQDM_DISABLE=1 $(BIN)/largebatch noise --epochs 2 --run-dir runs/noise | tee docs/results/fashion-mnist/noise.txt
	$(BIN)/largebatch report runs/sweeps --sweeps $(RESULTS) --out docs/results/fashion-mnist

# The short-budget ablation (6 epochs: under-trained, kept for comparison) into docs/results/fashion-mnist-6-epochs.
SHORT := batch_size warmup batchnorm weight_decay lr_sensitivity beyond
results-6-epochs: setup
	for s in $(SHORT); do $(BIN)/largebatch sweep recipes/sweeps/$$s.yaml --out runs/sweeps --jobs $(JOBS) || exit 1; done
	$(BIN)/largebatch report runs/sweeps --sweeps $(SHORT) --out docs/results/fashion-mnist-6-epochs

# The 60-epoch budget, where B = 2048 (8x) holds over 5 seeds: Figure 1, Table 1 (warmup) and the rate rule
# (linear against square root) at it, 5 seeds each, and their report, into docs/results/fashion-mnist-60-epochs.
# From nothing ~12 h on 2 cores (55 runs of ~27 min on one core, two at a time); resumable. To add to the
# committed runs rather than redo them, copy them in first:
# cp -r docs/results/fashion-mnist-60-epochs/{budget_wide_*,figure1_60,warmup_60,rate_60} runs/sweeps/
WIDE := figure1_60 warmup_60 rate_60
results-60-epochs: setup
	for s in $(WIDE); do $(BIN)/largebatch sweep recipes/sweeps/$$s.yaml --out runs/sweeps --jobs $(JOBS) || exit 1; done
	$(BIN)/largebatch report runs/sweeps --sweeps $(WIDE) --out docs/results/fashion-mnist-60-epochs

# Engine vs a bare PyTorch loop, all-reduce costs and the planner's calibration (runs/bench/).
bench: setup
	$(BIN)/python benchmarks/run.py --out runs/bench

# ResNet-50 bf16 through the engine and a bare loop (NCHW, channels-last, compiled), ghost vs plain BN, nvJPEG vs
# the CPU decode, ZeRO-2 on one GPU and a 20-step split-invariance check: gpu_check.md and gpu_check.json.
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py --out runs/gpu_check

# Two test files at a time: most of the suite's time is processes starting and importing torch, which a
# second core overlaps. Each file stays on one worker, so a module's fixtures (tests/test_zero.py's runs) run once.
# Then the float-order-sensitive tests (-m numerics) again under another instruction set: PyTorch's and
# oneDNN's baseline kernels (every x86-64 CPU has them), so a tolerance measured on this machine's
# AVX2 or AVX-512 kernels must also hold for others (README: "What is exact and what drifts").
SECOND_ISA := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile
	$(SECOND_ISA) $(BIN)/python -m pytest -q -n 2 --dist loadfile -m numerics

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# The library's import graph (docs/imports.svg), drawn by pydeps with Debian's graphviz.
imports: setup
	command -v dot >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq graphviz)
	$(BIN)/pip install -q pydeps
	$(BIN)/pydeps largebatch --only largebatch --no-show --rankdir LR -T svg -o docs/imports.svg

clean:
	rm -rf runs $(VENV)
