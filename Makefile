# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The install step reruns when the text of pyproject.toml or of this file changes, not when a tool rewrites one unchanged.
STAMP  := $(VENV)/.fasterbn-installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
# torch and torchvision must match; these are the versions this project is tested with.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test docs bench zoo zoo-timm zoo-eco export clean-nbs help
help:
	@echo "make demo   set up .venv, train on digits, fold, compare"
	@echo "make test   set up .venv, check notebooks and package agree, run every test"
	@echo "make docs   build the docs site into _docs/ and README.md (no Quarto needed)"
	@echo "make bench  the folding benchmark (bench/results.md, nbs/images/benchmark.png), then the deployment one (bench/deploy.md)"
	@echo "make zoo    both sweeps below (slow; ZOO_ARGS=--quick to try either)"
	@echo "make zoo-timm  fold every timm family and torchvision model with a BatchNorm, write bench/zoo.md"
	@echo "make zoo-eco   fold ~140 models of transformers, smp, MONAI, speechbrain, ultralytics, fastai, write bench/eco_zoo.md"

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev]" $(TORCH_PINS)
	rm -f $(VENV)/.fasterbn-installed*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fasterbn demo

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH tools/check_sync.sh
	PATH=$(CURDIR)/$(BIN):$$PATH nbdev-test
	$(BIN)/python -m pytest -m "not notebook" -q

docs: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH tools/docs.sh

bench: $(STAMP)
	$(BIN)/python -c "import fasterai" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[bench]" $(TORCH_PINS) || echo "fasterai could not be installed: its rows will say so"
	$(BIN)/python tools/deploy_bench.py --check
	$(BIN)/python tools/benchmark.py
	$(BIN)/python tools/deploy_bench.py

# Not part of `make test`: about half an hour each on two cores. tools/zoo.py --help and tools/eco_zoo.py --help list ZOO_ARGS
# (both take --quick, --models, --jobs, --timeout, --memory, --out; eco_zoo.py also --lib).
zoo: zoo-timm zoo-eco

zoo-timm: $(STAMP)
	$(BIN)/python tools/zoo.py $(ZOO_ARGS)

zoo-eco: $(STAMP)
	$(BIN)/python -c "import transformers, segmentation_models_pytorch, monai, speechbrain, ultralytics, einops" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[eco]" $(TORCH_PINS) || echo "some eco libraries could not be installed: their models will say so"
	$(BIN)/python tools/eco_zoo.py $(ZOO_ARGS)

export: $(STAMP)
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean
