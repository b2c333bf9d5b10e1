# Two commands do everything on a fresh machine:  make train   and   make test
# (each sets up .venv first: CPU torch, the project with its dev extras, and the Fashion-MNIST files;
# `make test` also installs SLURM + munge for the single-node cluster of tests/test_slurm.py).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed before the project so that pip never resolves torch to a CUDA build it does not need.
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: setup data slurm-packages train test lint bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt-get is available; otherwise
# `ssmoe train` downloads it (MD5-checked) into ~/.cache/ssmoe on first use.
# mlbench's R data files (data=letter) from Debian's r-cran-mlbench, downloaded and unpacked, not
# installed (that would pull in R): its data/*.rda and copyright go to ~/.cache/ssmoe/mlbench, where
# ssmoe looks for them (docs/data.md). No root needed unless apt's package lists must be fetched first.
# MNIST-1D needs nothing here: ssmoe generates it (PyPI mnist1d) and caches it on first use.
MLBENCH_DIR := $${XDG_CACHE_HOME:-$$HOME/.cache}/ssmoe/mlbench
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "note: could not install dataset-fashion-mnist; ssmoe will download Fashion-MNIST instead"; \
	fi
	@dir="$(MLBENCH_DIR)"; \
	if [ ! -f "$$dir/LetterRecognition.rda" ] && command -v apt-get >/dev/null && command -v dpkg >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); tmp=$$(mktemp -d); \
	  (cd "$$tmp" \
	    && (apt-get download -qq r-cran-mlbench 2>/dev/null \
	        || ($$SUDO apt-get update -qq && apt-get download -qq r-cran-mlbench 2>/dev/null)) \
	    && dpkg -x r-cran-mlbench_*.deb pkg && mkdir -p "$$dir" \
	    && cp pkg/usr/lib/R/site-library/mlbench/data/*.rda pkg/usr/share/doc/r-cran-mlbench/copyright "$$dir"/) \
	    || echo "note: could not unpack r-cran-mlbench into $$dir; data=letter will fail until it is there"; \
	  rm -rf "$$tmp"; \
	fi

# SLURM and munge for tests/test_slurm.py, which starts a single-node cluster on 127.0.0.1 (its daemons
# run as root, so only as root where apt-get is available; elsewhere those tests skip and say why).
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
slurm-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && ! (command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged) >/dev/null; then \
	  (apt-cache show slurmd >/dev/null 2>&1 || apt-get update -qq) \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SLURM_PACKAGES) >/dev/null 2>&1 \
	  || echo "note: could not install $(SLURM_PACKAGES); the SLURM tests will skip"; \
	fi

train: setup
	$(BIN)/ssmoe train $(ARGS)

# Two pytest-xdist workers (TEST_WORKERS=0: one process): most tests wait on `ssmoe` subprocesses, so two
# keep both cores busy. loadgroup keeps tests marked xdist_group(NAME) on one worker (the SLURM cluster).
# OMP_NUM_THREADS=1: one torch thread per process, as the workers already fill the cores (runs that set
# `threads` still get what they ask for).
TEST_WORKERS ?= 2
test: setup slurm-packages
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/lightning_overhead.py

clean:
	rm -rf $(VENV) logs mlruns mlflow.db .pytest_cache
