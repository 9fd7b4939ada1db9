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

.PHONY: help data train test test-slow sweep tensorboard bench bench-fastai bench-peers docs site clean clean-outputs

help:
	@echo "make train        set up .venv if needed, run the default experiment (ARGS='key=value ...')"
	@echo "make test         set up .venv if needed, run the test suite (one worker per core; TEST_WORKERS=1 for one)"
	@echo "make data         put the real MovieLens-100k in the cache (once, online; set-up does it too)"
	@echo "make test-slow    the long end-to-end tests too"
	@echo "make sweep        the weight-decay lesson: L2 wd over four decades on ML-100k, train and valid RMSE against wd"
	@echo "make tensorboard  TensorBoard on outputs/ (http://127.0.0.1:6006)"
	@echo "make bench        the performance benchmarks (table under outputs/bench/)"
	@echo "make docs         rerun the results pages' runs: their generated numbers, pictures and screenshots (ARGS='--only NAME --quick')"
	@echo "make site         build the documentation site into site/, offline, strict (reference pages generated from the code)"
	@echo "make bench-fastai the movielens recipes against fastai's own, timed alternately (fastai in its own venv)"
	@echo "make bench-peers  the ratings recipes and ensembles against Surprise SVD/SVD++ and fastai, 3 seeds, u1 and random 80/20 (peers in their own venvs)"
	@echo "make clean        remove caches and build files (keeps outputs/ and .venv)"
	@echo "make clean-outputs  delete every run under outputs/ (asks first)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m stagetune.collab.bundled
	touch $(STAMP)

# ML-100k's files out of the pinned recbole wheel (pip download --no-deps), checked by SHA-256,
# into $$STAGETUNE_CACHE or ~/.cache/stagetune; instant when they are already there.
data: $(STAMP)
	$(BIN)/python -m stagetune.collab.bundled

train: data
	$(BIN)/stagetune $(ARGS)

test: data
	$(PYTEST) $(ARGS)

test-slow: data
	$(PYTEST) -m slow $(ARGS)

sweep: data
	$(BIN)/stagetune -m experiment=movielens sweep=wd_l2 $(ARGS)

tensorboard: $(STAMP)
	$(BIN)/tensorboard --logdir outputs --host 127.0.0.1 --port 6006

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

docs: data
	$(BIN)/python scripts/make_docs.py $(ARGS)

# MkDocs with Material, offline; scripts/site_reference.py (a hook) writes the reference pages from the code.
site: $(STAMP)
	NO_MKDOCS_2_WARNING=1 PYTHONPATH=src $(BIN)/mkdocs build --strict --site-dir site $(ARGS)

# fastai in a virtual environment of its own (no system site-packages), never in .venv: it is a
# yardstick, not a dependency. The torch wheels are the ones .venv pins.
FASTAI_ENV := outputs/bench/fastai-env
$(FASTAI_ENV)/.installed:
	$(PYTHON) -m venv $(FASTAI_ENV)
	$(FASTAI_ENV)/bin/python -m pip install --quiet fastai torch==2.14.1 torchvision==0.29.1
	touch $@

bench-fastai: data $(FASTAI_ENV)/.installed
	$(BIN)/python -m benchmarks.fastai_collab $(ARGS)

# Surprise (scikit-surprise) likewise in its own environment: it needs numpy < 2 and builds with a C compiler.
SURPRISE_ENV := outputs/bench/surprise-env
$(SURPRISE_ENV)/.installed:
	$(PYTHON) -m venv $(SURPRISE_ENV)
	$(SURPRISE_ENV)/bin/python -m pip install --quiet 'numpy<2' scikit-surprise
	touch $@

bench-peers: data $(FASTAI_ENV)/.installed $(SURPRISE_ENV)/.installed
	OMP_NUM_THREADS=1 $(BIN)/python -m benchmarks.collab_peers $(ARGS)

clean:
	rm -rf build dist site .pytest_cache .hypothesis src/*.egg-info lightning_logs
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

clean-outputs:
	@printf "Delete every run under outputs/? [y/N] "; read answer; \
	if [ "$$answer" = y ]; then find outputs -mindepth 1 -not -name .gitkeep -delete && echo "outputs/ emptied"; \
	else echo "kept outputs/"; fi
