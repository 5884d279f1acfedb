# Developer entry points. `make run` and `make test` are the README's two set-up commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= export,dev,loadtest,docs

.PHONY: venv system-deps run zoo cifar-zoo cifar-zoo-plan cifar-zoo-status cifar-zoo-pause cifar-zoo-continue cifar-zoo-pick cifar-zoo-publish serving-figures test lint typecheck unit docs settings-table protos gpu-check clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	touch $@

# Debian packages the tests use for real (a Prometheus server and promtool).
system-deps:
	bash scripts/install-system-deps.sh

HOST ?= 127.0.0.1
PORT ?= 8000

# The main job: serve the committed model repository (models/, the CIFAR-10 zoo) on
# http://$(HOST):$(PORT). Ctrl-C stops it.
run: venv
	$(BIN)/python -m service --model-repository models --host $(HOST) --port $(PORT)

# The offline stage on the embedded default (scikit-learn's digits): teacher, students, ONNX,
# int8 variants, model cards, REPORT.md and pareto.png in out/digits-zoo.
zoo: venv
	$(BIN)/python -m export zoo --dataset digits --out out/digits-zoo

# The CIFAR-10 zoo that models/ is picked from (export/configs/zoo-cifar10.yaml; many CPU-hours,
# see models/REPORT.md), resumable: run it again after an interruption, it continues from the
# last finished epoch. Training state lives outside the work tree, in ZOO_DIR.
# CIFAR10 is the ImageFolder tree of JPEGs.
CIFAR10 ?= ../shared/datasets/cifar10
ZOO_DIR ?= $(HOME)/.cache/rocketserve/cifar10-zoo
ZOO_ONLY ?=
# Entries two at a time in their own processes once the teacher is done (1.18-1.26x on 2 cores,
# export/lanes.py); each lane logs to $(ZOO_DIR)/.work/lane-<i>.log.
ZOO_LANES ?= 2
# When ZOO_DIR is lost (a new machine), the networks this repository serves that were trained to
# the zoo's recipes are rebuilt from their ONNX files instead of trained again (export/adopt.py).
ZOO_ADOPT ?= models
# Niced, so that other work on the machine comes first. OpenMP keeps its default waits: passive
# ones (OMP_WAIT_POLICY=PASSIVE) cost the two-thread teacher 15-20 % of its img/s (export bench,
# WRN-40-2 bf16, interleaved: 165-216 against 188-224; one-thread lanes the same either way).
cifar-zoo: venv
	nice -n 10 $(BIN)/python -m export zoo --dataset cifar10 \
		--data-dir $(CIFAR10) --out $(ZOO_DIR) --resume --lanes $(ZOO_LANES) \
		$(if $(ZOO_ADOPT),--adopt-from $(ZOO_ADOPT)) $(if $(ZOO_ONLY),--only $(ZOO_ONLY))

# What the zoo costs on this machine, entry by entry, before it runs (measures img/s for ~1 min;
# never while the zoo trains: pause it first); saved in $(ZOO_DIR)/.work/plan.json, where
# cifar-zoo-status reads it to price what is left.
cifar-zoo-plan: venv
	$(BIN)/python -m export zoo-plan --dataset cifar10 --data-dir $(CIFAR10) --out $(ZOO_DIR)

# Where the running (or stopped) zoo stands: epochs, test top-1, img/s and time left per entry.
cifar-zoo-status: venv
	$(BIN)/python -m export zoo-status --dataset cifar10 --out $(ZOO_DIR)

# Free the cores for a benchmark or a test suite, then give them back; the pause is not counted
# as training time (export/training/pause.py).
cifar-zoo-pause: venv
	$(BIN)/python -m export zoo-pause --out $(ZOO_DIR)
cifar-zoo-continue: venv
	$(BIN)/python -m export zoo-continue --out $(ZOO_DIR)

# models/ from the zoo: the teacher, each architecture's most accurate network, the Pareto front
# and the config's `serve` list (with their int8 variants); REPORT.md keeps every network trained.
# docs/offline.md's zoo tables follow (scripts/zoo_tables.py; `make lint` checks them).
cifar-zoo-pick: venv
	$(BIN)/python -m export pick $(ZOO_DIR) --into models
	$(BIN)/python scripts/zoo_tables.py

# A finished zoo into models/: its lanes measured each network's latency beside the other lane's
# training, so every network is measured again on the quiet machine first, then picked. Latency
# is the median of 5 interleaved rounds: one run per file put WRN-16-1 int8 files anywhere from
# 4,300 to 9,200 images/s at batch 32 on the 2-core machine, round to round.
cifar-zoo-publish: venv
	$(BIN)/python -m export evaluate $(ZOO_DIR) --data-dir $(CIFAR10) --rounds 5
	$(BIN)/python -m export pick $(ZOO_DIR) --into models
	$(BIN)/python scripts/zoo_tables.py

# The serving figures the README and docs/performance.md quote, measured again on models/ in one
# window (~40 min on 2 cores; a running zoo is paused meanwhile); raw outputs in loadtest/results/.
serving-figures: venv
	ZOO_DIR=$(ZOO_DIR) PY=$(BIN)/python scripts/serving-figures.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python scripts/settings_table.py --check
	$(BIN)/python scripts/zoo_tables.py --check
	$(BIN)/python scripts/protos.py --check

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q -rs

# The docs site (mkdocs, material theme), built strictly: a broken link fails the build.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Rewrite docs/settings.md's table from the Settings field descriptions.
protos: venv
	$(BIN)/python scripts/protos.py

settings-table: venv
	$(BIN)/python scripts/settings_table.py

test: venv system-deps lint typecheck unit docs

# On a machine with an NVIDIA GPU: the gpu-marked tests and the teacher's bench on CUDA
# (docs/deployment.md, "Checking a GPU machine").
gpu-check:
	bash scripts/gpu-check.sh

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
