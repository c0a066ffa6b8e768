# oodcache: run the network once, then tune and report every OOD method from the cache.
# Targets only call the CLI; file targets let make skip finished work.
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OODCACHE := $(BIN)/oodcache
STAMP := $(VENV)/.installed

ARCH ?= digits_resnet
# BENCH defaults to the arch's natural benchmark (`benchmark:` in its YAML): resnet50 -> imagenet
ARCH_YAML := $(firstword $(wildcard oodcache/configs/archs/$(ARCH).yaml) $(filter %.yaml %.yml,$(ARCH)))
BENCH ?= $(or $(shell sed -n 's/^benchmark: *\([A-Za-z0-9_.-]*\).*/\1/p' $(ARCH_YAML) 2>/dev/null),digits)
DATA ?=
WEIGHTS ?=
NPROC ?=
EXTRACT_ARGS ?=
METHOD ?= all
TRIALS ?= 40
SEED ?= 0

OUT := cache/$(BENCH)/$(ARCH)
CACHE := $(OUT)/cache.h5
# several WEIGHTS: one cache per checkpoint in $(OUT)/<stem>/ (<parent>-<stem> when stems collide)
STEMS := $(foreach w,$(WEIGHTS),$(basename $(notdir $(w))))
CKPTS := $(if $(filter $(words $(STEMS)),$(words $(sort $(STEMS)))),$(STEMS),\
	$(foreach w,$(WEIGHTS),$(notdir $(patsubst %/,%,$(dir $(w))))-$(basename $(notdir $(w)))))
CACHES := $(if $(word 2,$(WEIGHTS)),$(foreach c,$(CKPTS),$(OUT)/$(c)/cache.h5),$(CACHE))
# NPROC=8: one process per GPU (or CPU share) through torchrun; shards merged into one cache
RUNNER := $(if $(NPROC),$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) -m oodcache,$(OODCACHE))
EXTRACT = $(RUNNER) extract --arch $(ARCH) --benchmark $(BENCH) $(if $(DATA),--data $(DATA)) $(EXTRACT_ARGS)
METHODS := $(sort $(filter-out __init__,$(basename $(notdir $(wildcard oodcache/search/methods/*.py)))))
SEARCHED := $(if $(filter all,$(METHOD)),$(METHODS),$(METHOD))
$(if $(filter-out $(METHODS),$(SEARCHED)),$(error unknown METHOD $(filter-out $(METHODS),$(SEARCHED)); known: all $(METHODS)))
# a study is out of date when its method's file, a method file it builds on (react_dice -> dice)
# or the shared search code (base, ops, coverage, study) changes
SEARCH_CODE := $(wildcard oodcache/search/*.py)
method_files = oodcache/search/methods/$(1).py $(patsubst %,oodcache/search/methods/%.py,\
	$(shell sed -n 's/^from oodcache\.search\.methods\.\([a-z0-9_]*\) import.*/\1/p' oodcache/search/methods/$(1).py))
# run folders (each holds cache.h5, studies/, best/, scores/, report/): one, or one per checkpoint
RUNS := $(patsubst %/cache.h5,%,$(CACHES))
BEST := $(foreach r,$(RUNS),$(foreach m,$(SEARCHED),$(r)/best/$(m).json))
# several checkpoints: each run's report plus the mean ± std over them (OpenOOD's s0/s1/s2 protocol)
REPORT := $(if $(word 2,$(RUNS)),$(OUT)/report_mean/report.md,$(OUT)/report/report.md)

help: ## list the targets and variables
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 10
	@echo "variables: ARCH=$(ARCH) BENCH=$(BENCH) DATA=$(DATA) METHOD=$(METHOD) TRIALS=$(TRIALS) SEED=$(SEED)"
	@echo "extract: WEIGHTS=\"s0.ckpt s1.ckpt ...\" (one cache each) NPROC=$(NPROC) (torchrun) EXTRACT_ARGS=$(EXTRACT_ARGS)"
	@echo "methods: $(METHODS)"

env: $(STAMP) ## create .venv and install oodcache with its test tools (first use only)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

lint: $(STAMP) ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check oodcache tests benchmarks
	$(BIN)/ruff format --check oodcache tests benchmarks
	$(BIN)/mypy oodcache

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix oodcache tests benchmarks
	$(BIN)/ruff format oodcache tests benchmarks

test: $(STAMP) ## run the test suite on CPU (installs PostgreSQL and Chromium for their tests when root)
	@bash tests/install_services.sh
	$(BIN)/python -m pytest -q

demo: $(STAMP) ## whole pipeline on the embedded digits benchmark: train, extract, search all, report
	$(OODCACHE) demo --trials $(TRIALS) --seed $(SEED)

extract: $(CACHES) ## run the network once and write the HDF5 cache (ARCH= BENCH= DATA= WEIGHTS= NPROC= EXTRACT_ARGS=)
ifeq ($(word 2,$(WEIGHTS)),)
$(CACHE): | $(STAMP)
	$(EXTRACT) --out $@ $(if $(WEIGHTS),--weights $(WEIGHTS))
else
define CHECKPOINT_RULE
$(OUT)/$(1)/cache.h5: | $(STAMP)
	$$(EXTRACT) --out $$@ --weights $(2)
endef
$(foreach i,$(shell seq $(words $(WEIGHTS))),\
	$(eval $(call CHECKPOINT_RULE,$(word $(i),$(CKPTS)),$(word $(i),$(WEIGHTS)))))
endif

search: $(BEST) ## tune METHOD (default: all) from the cache(s) with Optuna; reruns add trials
define SEARCH_RULE
$(1)/best/$(2).json: $(call method_files,$(2)) $(SEARCH_CODE) $(1)/cache.h5 | $$(STAMP)
	$$(OODCACHE) search --cache $(1)/cache.h5 --method $(2) --trials $$(TRIALS) --seed $$(SEED)
endef
$(foreach r,$(RUNS),$(foreach m,$(SEARCHED),$(eval $(call SEARCH_RULE,$(r),$(m)))))

score: $(BEST) ## replay the best parameters on every split and write score files
	$(foreach r,$(RUNS),$(OODCACHE) score --cache $(r)/cache.h5 --best-all &&) true

report: $(REPORT) ## metrics table (Markdown, HTML, CSV) of every searched method; mean ± std over checkpoints
$(REPORT): $(BEST) | $(STAMP)
	$(OODCACHE) report $(foreach r,$(RUNS),--cache $(r)/cache.h5) \
		$(if $(word 2,$(RUNS)),--out $(dir $(REPORT)))

bench: $(STAMP) ## performance figures: stage wall times, NAC trials/s, extraction images/s
	$(BIN)/python benchmarks/bench_pipeline.py

reliability: $(STAMP) ## run the fault suite (tests/faults) and rewrite docs/reliability.md
	$(BIN)/python tests/faults/reliability.py
