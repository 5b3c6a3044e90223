# stm3-lightning — run `make help` for every target.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned by constraints.txt (CPU wheel here); a GPU box picks its build with
# make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

DATA ?=
EXP ?=
ARGS ?=
CKPT ?=
RUNS ?= outputs
SWEEP ?= experiments/sweeps/ablations_pems08.yaml
SWEEP_ID ?=
# gpu-check: the interpreter with CUDA PyTorch on the GPU machine; wheels: what it lacks, for its Python.
GPU_PYTHON ?= python3
GPU_PY_VERSION ?= 3.12
GPU_WHEELS ?= omegaconf==2.4.0 PyYAML==6.0.4
SEEDS ?=
VARIANT ?=

TRAIN_ARGS := $(if $(DATA),data=$(DATA)) $(if $(EXP),experiment=$(EXP)) $(ARGS)

.PHONY: baselines reproduce results help setup test test-fast test-gpu gpu-check wheels lint format train eval summary datasets bench bench-profile report ablations sweep agent clean-logs

help: ## List every target
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

# The venv as a file target: every target that runs something from $(BIN) depends on it, so on a fresh clone
# `make train` or `make test` creates it first (once: it exists afterwards); `make setup` re-installs it.
VENV_READY := $(BIN)/stm3

$(VENV_READY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"

setup: ## Create .venv and install torch (CPU build unless TORCH_INDEX is set) + the package with dev extras
	@$(MAKE) --no-print-directory --always-make $(VENV_READY)

test: $(VENV_READY) ## Run the whole test suite (slow tests included)
	$(BIN)/pytest -q

test-fast: $(VENV_READY) ## Run the tests not marked slow
	$(BIN)/pytest -q -m "not slow"

test-gpu: $(VENV_READY) ## Run the gpu-marked tests (need a CUDA GPU; the mamba-ssm ones also the cuda extra)
	$(BIN)/pytest -q -m gpu

gpu-check: ## On a GPU machine: gpu tests + PEMS08 epoch benchmark -> benchmarks/results/gpu.json (<= 8 min)
	PYTHON=$(GPU_PYTHON) bash benchmarks/gpu_check.sh

wheels: $(VENV_READY) ## Download into .whl/ the wheels gpu-check installs on a GPU machine without network (GPU_PY_VERSION)
	$(BIN)/pip download --no-deps --only-binary=:all: --python-version $(GPU_PY_VERSION) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

lint: $(VENV_READY) ## ruff lint + format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(VENV_READY) ## ruff format + autofix
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

train: $(VENV_READY) ## Train: make train [DATA=pems08] [EXP=reproduce/pems08] [ARGS="trainer.max_epochs=5 seed=3"]
	$(BIN)/stm3 train $(TRAIN_ARGS)

eval: $(VENV_READY) ## Test a checkpoint with its run's config: make eval CKPT=outputs/.../checkpoints/last.ckpt
	$(BIN)/stm3 eval ckpt=$(CKPT) $(ARGS)

summary: $(VENV_READY) ## Resolved config, parameter count, kernel backend: make summary [DATA=..] [ARGS=..]
	$(BIN)/stm3 summary $(TRAIN_ARGS)

datasets: $(VENV_READY) ## List the datasets, their files and where they come from
	$(BIN)/stm3 datasets

bench: $(VENV_READY) ## Performance benchmarks, ~21 min on 2 idle cores (tables + JSON under benchmarks/results/)
	$(BIN)/python -m benchmarks.train_step --compile --bf16 --bf16-train
	$(BIN)/python -m benchmarks.scaling

bench-profile: $(VENV_READY) ## Where the time goes: FLOPs and time per part of a training step (benchmarks/results/flops.json)
	$(BIN)/python -m benchmarks.flops

report: $(VENV_READY) ## Ablation report from finished runs: make report [RUNS=outputs|wandb:entity/project]
	$(BIN)/stm3 report runs=$(RUNS) $(ARGS)

ablations: $(VENV_READY) ## Run the ablation grid locally: make ablations DATA=pems08 [ARGS=...]
	$(BIN)/stm3 ablations $(if $(DATA),data=$(DATA)) $(ARGS)

sweep: $(VENV_READY) ## Create a W&B sweep: make sweep SWEEP=experiments/sweeps/ablations_pems08.yaml
	$(BIN)/wandb sweep $(SWEEP)

agent: $(VENV_READY) ## Run a W&B sweep agent: make agent SWEEP_ID=entity/project/id
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/wandb agent $(SWEEP_ID)

clean-logs: ## Remove local run outputs and W&B offline files
	rm -rf outputs wandb

baselines: $(VENV_READY) ## Baselines' PEMS08 test metrics at 12->12 and 96->96 under both protocols (README table)
	$(BIN)/stm3 baselines $(if $(DATA),data=$(DATA)) callbacks.progress_bar=none trainer.max_epochs=30 callbacks.early_stopping.patience=5 $(ARGS)

reproduce: $(VENV_READY) ## Paper config x seeds + results/<data>-<L>-<H>.json: make reproduce DATA=pems08 [SEEDS=1,2,3] [VARIANT=x] [ARGS=...]
	$(BIN)/stm3 reproduce data=$(DATA) $(if $(SEEDS),seeds=$(SEEDS)) $(if $(VARIANT),variant=$(VARIANT)) $(ARGS)

results: $(VENV_READY) ## Rebuild results/README.md; with DATA= also that group's JSON from its finished runs: make results [DATA=..] [ARGS=..]
	$(BIN)/stm3 results $(if $(DATA),data=$(DATA)) $(if $(VARIANT),variant=$(VARIANT)) $(ARGS)
