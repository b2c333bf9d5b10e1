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
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "note: could not install dataset-fashion-mnist; ssmoe will download Fashion-MNIST instead"; \
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

test: setup slurm-packages
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/lightning_overhead.py

clean:
	rm -rf $(VENV) logs mlruns mlflow.db .pytest_cache
