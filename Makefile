# stagetune: `make train` and `make test` set up .venv on first use (Python 3.11, pinned torch).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
# The suite runs in one pytest worker per core (pytest-xdist), a test file to a worker (its
# module fixtures built once), each worker's torch on one thread so the workers do not contend.
TEST_WORKERS ?= auto
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

.PHONY: help data train test test-slow lint sweep tensorboard bench bench-fastai bench-peers docs site clean clean-outputs

# `make help` lists every target whose line ends in a `## ` comment, with that comment.
help: ## this list
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m stagetune.collab.bundled
	touch $(STAMP)

# ML-100k's files out of the pinned recbole wheel (pip download --no-deps), checked by SHA-256,
# into $$STAGETUNE_CACHE or ~/.cache/stagetune; instant when they are already there.
data: $(STAMP) ## put the real MovieLens-100k in the cache (out of the pinned recbole wheel; set-up does it too)
	$(BIN)/python -m stagetune.collab.bundled

train: data ## set up .venv if needed, run the default experiment (ARGS='key=value ...')
	$(BIN)/stagetune $(ARGS)

test: data ## set up .venv if needed, run the test suite (one worker per core; TEST_WORKERS=1 for one)
	$(PYTEST) $(ARGS)

test-slow: data ## the long end-to-end tests too
	$(PYTEST) -m slow $(ARGS)

lint: $(STAMP) ## ruff: the linter and the formatter's check, as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

sweep: data ## the weight-decay lesson: L2 wd over four decades on ML-100k, train and valid RMSE against wd
	$(BIN)/stagetune -m experiment=movielens sweep=wd_l2 $(ARGS)

tensorboard: $(STAMP) ## TensorBoard on outputs/ (http://127.0.0.1:6006)
	$(BIN)/tensorboard --logdir outputs --host 127.0.0.1 --port 6006

bench: $(STAMP) ## the performance benchmarks (table under outputs/bench/)
	$(BIN)/python -m benchmarks $(ARGS)

docs: data ## rerun the runs behind the docs' generated numbers, pictures and screenshots (ARGS='--only NAME --quick')
	$(BIN)/python scripts/make_docs.py $(ARGS)

# MkDocs with Material, offline; scripts/site_reference.py (a hook) writes the reference pages from the code.
site: $(STAMP) ## build the documentation site into site/, offline, strict (reference pages generated from the code)
	NO_MKDOCS_2_WARNING=1 PYTHONPATH=src $(BIN)/mkdocs build --strict --site-dir site $(ARGS)

# fastai in a virtual environment of its own (no system site-packages), never in .venv: it is a
# yardstick, not a dependency. The torch wheels are the ones .venv pins.
FASTAI_ENV := outputs/bench/fastai-env
$(FASTAI_ENV)/.installed:
	$(PYTHON) -m venv $(FASTAI_ENV)
	$(FASTAI_ENV)/bin/python -m pip install --quiet fastai torch==2.14.1 torchvision==0.29.1
	touch $@

bench-fastai: data $(FASTAI_ENV)/.installed ## the movielens recipes against fastai's own, timed alternately (fastai in its own venv)
	$(BIN)/python -m benchmarks.fastai_collab $(ARGS)

# Surprise (scikit-surprise) likewise in its own environment: it needs numpy < 2 and builds with a C compiler.
SURPRISE_ENV := outputs/bench/surprise-env
$(SURPRISE_ENV)/.installed:
	$(PYTHON) -m venv $(SURPRISE_ENV)
	$(SURPRISE_ENV)/bin/python -m pip install --quiet 'numpy<2' scikit-surprise
	touch $@

bench-peers: data $(FASTAI_ENV)/.installed $(SURPRISE_ENV)/.installed ## the ratings recipes (refit) against Surprise SVD/SVD++/KNNBaseline, defaults and tuned on valid, and fastai (peers in their own venvs)
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.collab_peers $(ARGS)

clean: ## remove caches and build files (keeps outputs/ and .venv)
	rm -rf build dist site .pytest_cache .hypothesis src/*.egg-info lightning_logs
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

clean-outputs: ## delete every run under outputs/ (asks first)
	@printf "Delete every run under outputs/? [y/N] "; read answer; \
	if [ "$$answer" = y ]; then find outputs -mindepth 1 -not -name .gitkeep -delete && echo "outputs/ emptied"; \
	else echo "kept outputs/"; fi
