"""The error catalogue: every bad input and fault a user can meet ends in one line saying what to do.

One parametrized test per category (docs/howto/errors.md; the site's error catalogue lists these cases): config values, data
values, ratings files, images, checkpoints and resume, run directories, signals and faults, and
every console command; hypothesis makes broken ratings files and configs. Most cases run in-process
(the config's validation, the run's start-up as the command starts it (:func:`run_job`), a command's ``main(argv)``);
a few subprocess cases prove the end-to-end contract: the exit code, one ``stagetune:`` line and
no traceback on the terminal, ``status: failed`` and the error in ``metrics.json``, the traceback
in ``train.log``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from stagetune.app import conf_dir
from stagetune.collab.movielens import MovieLens, read_ratings
from stagetune.collab.ratings_file import RatingsFile
from stagetune.commands import export, predict, recommend, report
from stagetune.config import validate
from stagetune.engine.faults import AtomicCheckpointIO
from stagetune.errors import ConfigError, DataError, StagetuneError
from stagetune.failures import user_errors
from stagetune.runs.checks import check_splits
from stagetune.runs.run import SETUP_INTERRUPTED, train
from stagetune.runs.rundir import RunDir
from stagetune.vision.data import ImageFolderData, to_rgb
from tests.helpers.cli import ROOT, run_cli

TESTS_CONF = f"hydra.searchpath=[file://{ROOT}/tests/conf]"
TINY = [TESTS_CONF, "experiment=tiny"]
RATINGS = ["experiment=ratings_synthetic", "data.n_users=40", "data.n_items=30", "data.n_ratings=600", "data.batch_size=32"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[TESTS_CONF, *overrides])


def run_job(cfg, run: Path, overrides: list[str]) -> float:
    """The run as ``stagetune`` starts it, every failure the StagetuneError a user reads (its failure policy)."""
    with user_errors(Path(run).resolve() / "train.log", SETUP_INTERRUPTED.format("SIGINT")):
        return train(cfg, run, overrides).value


def job(run: Path, *overrides: str, passed: list[str] | None = None) -> StagetuneError:
    """A run started in-process as the command starts it; the error it stops with, recorded as the command records it."""
    with pytest.raises(StagetuneError) as caught:
        run_job(composed(*overrides), run, list(overrides) if passed is None else passed)
    RunDir(run).record_failure(caught.value.status, str(caught.value))
    return caught.value


def trained(run: Path, *overrides: str) -> Path:
    """A completed tiny run (or ratings run) in ``run``: what resume, predict, recommend and export read."""
    run_job(composed(*overrides), run, list(overrides))
    RunDir(run).release()
    assert RunDir(run).metrics()["status"] == "completed"
    return run


# -- config values: checked by validate() before anything is built --------------------------------

CONFIG = [
    # (overrides, key, a fragment of what is allowed)
    (["plan.lr=0"], "plan.lr", "> 0"),
    (["plan.lr=-0.1"], "plan.lr", "> 0"),
    (["plan.lr=inf"], "plan.lr", "> 0"),
    (["plan.lr=nan"], "plan.lr", "> 0"),
    (["plan.lr=fast"], "plan.lr", "a number > 0"),
    (["plan.stages.frozen.epochs=0"], "plan.stages.frozen.epochs", ">= 1"),
    (["plan.stages.frozen.epochs=-3"], "plan.stages.frozen.epochs", ">= 1"),
    (["plan.stages.unfrozen.epochs=1.5"], "plan.stages.unfrozen.epochs", "could not be converted"),
    (["plan.stages.unfrozen.epochs=two"], "plan.stages.unfrozen.epochs", "could not be converted"),
    (["plan.stages.unfrozen.lr=[1e-2,1e-4]"], "plan.stages.unfrozen.lr", "low end is above the high end"),
    (["plan.stages.unfrozen.lr=[0,1e-4]"], "plan.stages.unfrozen.lr", "finite and > 0"),
    (["plan.stages.unfrozen.lr=[1e-5,1e-4,1e-3]"], "plan.stages.unfrozen.lr", "[lo, hi]"),
    (["plan.stages.unfrozen.lr=[]"], "plan.stages.unfrozen.lr", "[lo, hi]"),
    (["plan.stages.unfrozen.lr=[a,b]"], "plan.stages.unfrozen.lr", "[lo, hi]"),
    (["plan.stages.unfrozen.lr=[true]"], "plan.stages.unfrozen.lr", "[lo, hi]"),
    (["plan.stages.unfrozen.lr=[1e-4,inf]"], "plan.stages.unfrozen.lr", "finite and > 0"),
    (["plan.stages.frozen.pct_start=0"], "plan.stages.frozen.pct_start", "(0, 1)"),
    (["plan.stages.frozen.pct_start=1"], "plan.stages.frozen.pct_start", "(0, 1)"),
    (["plan.stages.frozen.pct_start=1.5"], "plan.stages.frozen.pct_start", "(0, 1)"),
    (["plan.stages.unfrozen.div=0"], "plan.stages.unfrozen.div", "> 0"),
    (["plan.stages.unfrozen.div=-5"], "plan.stages.unfrozen.div", "> 0"),
    (["plan.stages.unfrozen.div_final=0"], "plan.stages.unfrozen.div_final", "> 0"),
    (["plan.stages.unfrozen.wd=-0.1"], "plan.stages.unfrozen.wd", ">= 0"),
    (["plan.stages.unfrozen.wd=nan"], "plan.stages.unfrozen.wd", "finite number"),
    (["+plan.stages.unfrozen.wd={head: -1}"], "plan.stages.unfrozen.wd.head", ">= 0"),
    (["plan.stages.unfrozen.schedule=step"], "plan.stages.unfrozen.schedule", "one_cycle, constant, cosine"),
    (["plan.stages.unfrozen.train_bn=maybe"], "plan.stages.unfrozen.train_bn", "maybe"),
    (["+plan.stages.typo.epochs=3"], "plan.stages.typo", "the chosen plan has no stage 'typo'"),
    (["plan.cache=maybe"], "plan.cache", "auto, on, off"),
    (["optim.name=lamb"], "optim.name", "adam, sgd, sgd_scratch"),
    (["optim.wd=-0.1"], "optim.wd", ">= 0"),
    (["optim.wd=inf"], "optim.wd", ">= 0"),
    (["optim.wd_kind=both"], "optim.wd_kind", "l2, decoupled"),
    (["optim.eps=0"], "optim.eps", "> 0"),
    (["optim.betas=[0.9,1.0]"], "optim.betas", "[0, 1)"),
    (["optim.betas=[0.9]"], "optim.betas", "[0, 1)"),
    (["optim.momentum=1"], "optim.momentum", "[0, 1)"),
    (["optim.momentum=-0.5"], "optim.momentum", "[0, 1)"),
    (["optim.nesterov=sometimes"], "optim.nesterov", "sometimes"),
    (["metric_mode=best"], "metric_mode", "min, max"),
    (["seed=-1"], "seed", "0 to 4294967295"),
    (["seed=4294967296"], "seed", "0 to 4294967295"),
    (["seed=forty"], "seed", "could not be converted"),
    (["test=perhaps"], "test", "perhaps"),
    (["checkpoint.save_top_k=0"], "checkpoint.save_top_k", "at least one"),
    (["checkpoint.save_top_k=-2"], "checkpoint.save_top_k", "at least one"),
    (["checkpoint.every_n_epochs=0"], "checkpoint.every_n_epochs", "1 or more"),
    (["logger.tensorboard=maybe"], "logger.tensorboard", "maybe"),
    (["+trainer.max_epochs=10"], "trainer.max_epochs", "the plan sets it"),
    (["+trainer.callbacks=[]"], "trainer.callbacks", "callbacks.NAME"),
    (["+trainer.default_root_dir=/tmp"], "trainer.default_root_dir", "hydra.run.dir"),
    (["+trainer.gradient_clip=1"], "trainer.gradient_clip", "trainer.gradient_clip_val"),
    (["resume=/nowhere/run"], "resume", "no such file or directory"),
    (["ckpt_path=/nowhere/last.ckpt"], "ckpt_path", "no such file or directory"),
    (["optim.bn_wd=sometimes"], "optim.bn_wd", "sometimes"),
    (["print_config=loud"], "print_config", "loud"),
    (["+trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", "a finite number >= 0"),
    (["trainer.gradient_clip_val=inf"], "trainer.gradient_clip_val", "a finite number >= 0"),
]


@pytest.mark.parametrize("overrides,key,allowed", CONFIG, ids=[" ".join(c[0]) for c in CONFIG])
def test_config_values(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        validate(composed("experiment=tiny", *overrides))
    assert err.value.key == key
    assert allowed in err.value.allowed
    assert str(err.value).startswith(f"{key}=")


# -- data and model values, trainer choices: checked when the run starts, before any training -----

STARTUP = [
    (["data.batch_size=0"], "data.batch_size", "must be >= 1"),
    (["data.batch_size=-8"], "data.batch_size", "must be >= 1"),
    (["data.batch_size=65"], "data.batch_size", "the training split has 64 examples; use at most 64"),
    (["trainer.devices=0"], "trainer.devices", "a number of devices >= 1"),
    (["trainer.devices=-2"], "trainer.devices", "a number of devices >= 1"),
    (["trainer=ddp_cpu", "trainer.sync_batchnorm=true"], "trainer.sync_batchnorm", "GPUs only"),
    (["trainer.sync_batchnorm=true"], "trainer.sync_batchnorm", "GPUs only"),
    (["trainer.precision=7"], "trainer.precision", "Allowed precision values: ('transformer-engine'"),
    (["trainer.accelerator=tpux"], "trainer.accelerator", "invalid accelerator name"),
    (["trainer.gradient_clip_algorithm=max"], "trainer.gradient_clip_algorithm", "Allowed algorithms: ['value', 'norm']"),
    (["trainer=ddp", "trainer.accelerator=cpu", "trainer.strategy=ddp_spawn", "trainer.devices=2"], "trainer.strategy", "use ddp"),
    (["metric=val/los"], "metric", "did you mean val/loss? the model logs: val/loss"),
    (["metric=val/accuracy"], "metric", "the model logs: val/loss"),
    (["metric=val/los", "trainer.num_sanity_val_steps=0"], "metric", "did you mean val/loss?"),
    (["plan.stages.frozen.freeze_to=3"], "plan.stages.frozen.freeze_to", "allowed -3..2"),
    (["plan.stages.frozen.freeze_to=-4"], "plan.stages.frozen.freeze_to", "allowed -3..2"),
    (["+plan.stages.unfrozen.wd={decoder: 0.1}"], "plan.stages.unfrozen.wd.decoder", "not a layer group"),
    (["experiment=ratings_synthetic", "model.n_factors=0"], "model.n_factors", "must be >= 1"),
    (["experiment=ratings_synthetic", "model.n_factors=-4"], "model.n_factors", "must be >= 1"),
    (["experiment=ratings_synthetic", "model.y_range=[5.5,0]"], "model.y_range", "lo < hi"),
    (["experiment=ratings_synthetic", "model.y_range=[0,inf]"], "model.y_range", "finite"),
    (["experiment=ratings_synthetic", "model.y_range=[3]"], "model.y_range", "[lo, hi]"),
    (["experiment=ratings_synthetic", "data.valid_pct=0"], "data.valid_pct", "(0, 1)"),
    (["experiment=ratings_synthetic", "data.valid_pct=1.5"], "data.valid_pct", "(0, 1)"),
    (["experiment=ratings_synthetic", "data.test_pct=-0.1"], "data.test_pct", "(0, 1)"),
    (["experiment=ratings_synthetic", "data.n_ratings=0"], "data.n_ratings", "between 1 and"),
    (["experiment=ratings_synthetic", "data.valid_pct=0.001"], "data.valid_pct", "the validation split is empty"),
    (["experiment=ratings_synthetic", "data.test_pct=0.0001"], "data.test_pct", "the test split is empty"),
    (["experiment=movielens_nn", "model.layers=[]"], "model.layers", "one or more hidden sizes"),
    (["experiment=movielens_nn", "model.layers=[0]"], "model.layers", "one or more hidden sizes"),
    (["experiment=movielens_nn", "model.user_width=0"], "model.user_width", "must be >= 1"),
    (["experiment=movielens", "data.split=u9"], "data.split", "allowed: random, time, u1"),
    (["experiment=movielens", "data.name=ml-7"], "data.name", "allowed: ml-100k"),
    (["experiment=movielens", "data.valid_pct=0"], "data.valid_pct", "(0, 1)"),
    (["experiment=movielens", "data.name=ml-1m"], "data.path", "only ml-100k is bundled"),
    (["experiment=digits_scratch", "data.size=0"], "data.size", "must be >= 8"),
    (["experiment=digits_scratch", "data.size=4"], "data.size", "must be >= 8"),
    (["experiment=digits_scratch", "data.classes=[3]"], "data.classes", "two or more distinct digits"),
    (["experiment=digits_scratch", "data.classes=[3,11]"], "data.classes", "two or more distinct digits"),
    (["experiment=digits_scratch", "data.valid_pct=0.6", "data.test_pct=0.5"], "data.valid_pct", "sum below 1"),
    (["experiment=digits_scratch", "data.train_per_class=0"], "data.train_per_class", ">= 1"),
    (["experiment=digits_scratch", "data.eval_batch_size=0"], "data.eval_batch_size", ">= 1"),
    (["experiment=digits_scratch", "data.num_workers=-1"], "data.num_workers", ">= 0"),
    (["experiment=pets", "data.size=0", "model.weights=null"], "data.size", "must be >= 8"),
    (["experiment=pets", "data.valid_pct=1", "model.weights=null"], "data.valid_pct", "(0, 1)"),
    (["experiment=digits_scratch", "model.head=mlp"], "model.head", "allowed"),
    (["experiment=sgd_line", "data.function=cubic"], "data.function", "allowed"),
    (["experiment=sgd_line", "data.x_max=-3"], "data.x_max", "must be above data.x_min"),
    (["experiment=sgd_line", "data.n_train=0"], "data.n_train", ">= 1"),
    (["experiment=sgd_line", "data.n_valid=0"], "data.n_valid", ">= 1"),
    (["experiment=universal_approx", "model.widths=[]"], "model.widths", "non-empty list"),
    (["experiment=ratings_synthetic", "model.sparse=true", "trainer.gradient_clip_val=1"], "model.sparse", "dense gradients"),
    (["+model.groups={body_early: early, head: head}"], "model.groups", "2 parameter(s) match no pattern: late.0.weight, late.0.bias"),
    (["experiment=digits_scratch", "model=torchvision", "model.arch=alexnet"], "model.arch", "a torchvision classification model of a supported family"),
]


@pytest.mark.parametrize("overrides,key,allowed", STARTUP, ids=[" ".join(c[0]) for c in STARTUP])
def test_startup_values(tmp_path, overrides, key, allowed):
    small = RATINGS if "experiment=ratings_synthetic" in overrides else []
    rest = [o for o in overrides if o != "experiment=ratings_synthetic"]
    base = small or (["experiment=tiny"] if not any(o.startswith("experiment=") for o in overrides) else [])
    err = job(tmp_path / "run", *base, *rest)
    assert isinstance(err, ConfigError) and err.exit_code == 2
    assert err.key == key and allowed in str(err)
    record = RunDir(tmp_path / "run").metrics()
    assert record["status"] == "failed" and record["error"] == str(err)
    assert "global_step" not in record, "stopped before training"


def test_an_evaluation_split_smaller_than_the_world_is_refused_in_one_line(tmp_path):
    """Under DDP every rank needs one validation example; with fewer the run would hang at the first all-reduce."""
    cfg = validate(composed("experiment=tiny", "data.n=2", "data.batch_size=2", "trainer=ddp_cpu", "trainer.devices=3"))
    from tests.tiny import TinyData

    with pytest.raises(ConfigError) as err:
        check_splits(cfg, TinyData(n=2, batch_size=2), world_size=3)
    assert str(err.value) == (
        "trainer.devices=3: the validation split has 2 example(s) for 3 processes; every process needs one: use at most 2 devices, or a larger split"
    )
    check_splits(cfg, TinyData(n=2, batch_size=2), world_size=2)


def test_one_cycle_stages_of_a_few_steps_train(tmp_path):
    """torch's OneCycleLR divides by zero when pct_start * steps == 1 (2 steps at 0.5, 4 at 0.25): such stages train."""
    for k, (n, pct) in enumerate([(16, 0.5), (32, 0.25), (8, 0.25), (40, 0.2)]):
        run = tmp_path / f"run{k}"
        value = run_job(
            composed("experiment=tiny", "plan=fit_one_cycle", "plan.stages.all.epochs=1", f"data.n={n}", f"plan.stages.all.pct_start={pct}"), run, []
        )
        RunDir(run).release()
        record = RunDir(run).metrics()
        assert record["status"] == "completed" and record["global_step"] == n // 8
        assert math.isfinite(value)


# -- ratings files --------------------------------------------------------------------------------

GOOD = "1\t10\t4\t881250949\n2\t10\t3\t881250950\n1\t20\t5\t881250951\n"


def ratings_folder(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    folder = tmp_path / "ml"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        path = folder / name
        if text is None:
            path.mkdir()
        elif isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    return folder


RATINGS_FILES = [
    # (files, split, error type, fragment; "{d}" is the folder)
    ({"u.data": "1\tx\t3\t881250949\n"}, "random", DataError, "{d}/u.data:1: expected USER<TAB>ITEM<TAB>RATING<TAB>TIMESTAMP"),
    ({"u.data": GOOD + "1\t2\t3\n"}, "random", DataError, "{d}/u.data:4: expected"),
    ({"u.data": GOOD + "1\t2\t3\t4\t5\n"}, "random", DataError, "{d}/u.data:4: expected"),
    ({"u.data": GOOD + "1.5\t2\t3\t4\n"}, "random", DataError, "{d}/u.data:4: expected"),
    ({"u.data": GOOD + "1\t2\tfour\t4\n"}, "random", DataError, "{d}/u.data:4: expected"),
    ({"u.data": GOOD + "1\t2\t3\tinf\n"}, "random", DataError, "{d}/u.data:4: expected"),
    ({"u.data": GOOD + "1\t2\t3\t-inf\n"}, "random", DataError, "{d}/u.data:4: expected"),
    ({"u.data": GOOD + "1\t2\t3\tnan\n"}, "random", DataError, "{d}/u.data:4: expected"),
    ({"u.data": GOOD + "1\t2\t3\t1e400\n"}, "random", DataError, "{d}/u.data:4: expected"),
    ({"u.data": GOOD + "1\t2\tnan\t4\n"}, "random", DataError, "{d}/u.data:4: rating nan is outside model.y_range [0, 5.5]"),
    ({"u.data": GOOD + "1\t2\t7\t4\n"}, "random", DataError, "{d}/u.data:4: rating 7 is outside model.y_range [0, 5.5]"),
    ({"u.data": GOOD + "1\t2\t-1\t4\n"}, "random", DataError, "{d}/u.data:4: rating -1 is outside"),
    ({"u.data": GOOD + "1,2,3,4\n"}, "random", DataError, "{d}/u.data:4: expected"),
    ({"u.data": ""}, "random", DataError, "{d}/u.data: no ratings in the file"),
    ({"u.data": "\n\n  \n"}, "random", DataError, "{d}/u.data: no ratings in the file"),
    ({"u.data": b"PK\x03\x04\x14\x00\x00\x00binary"}, "random", DataError, "{d}/u.data:1: expected"),
    ({"u.data": None}, "random", DataError, "{d}/u.data is a directory, not a ratings file"),
    ({"ratings.dat": "1::10::4\n"}, "random", DataError, "{d}/ratings.dat:1: expected USER::ITEM::RATING::TIMESTAMP"),
    ({"ratings.csv": "userId,movieId,rating,timestamp\n"}, "random", DataError, "{d}/ratings.csv: no ratings in the file"),
    ({"ratings.csv": "userId,movieId,rating,timestamp\n1;10;4;5\n"}, "random", DataError, "{d}/ratings.csv:2: expected USER,ITEM,RATING,TIMESTAMP"),
    (
        {"ratings.csv": "userId,movieId,rating,timestamp\n1,10,4,5\n", "movies.csv": "movieId,title\n10,Caf\xe9\n".encode("latin-1")},
        "random",
        DataError,
        "{d}/movies.csv: not UTF-8 text (byte 0xe9; a Latin-1 file?)",
    ),
    (
        {"ratings.csv": "userId,movieId,rating,timestamp\n1,10,4,5\n", "movies.csv": None},
        "random",
        DataError,
        "{d}/movies.csv is a directory, not a titles file",
    ),
    ({"u.data": GOOD, "u.item": "ten|Heat\n"}, "random", DataError, "{d}/u.item:1: expected ITEM_ID and TITLE"),
    ({"ratings.csv": "userId,movieId,rating,timestamp\n1,10,4,5\n"}, "u1", ConfigError, "ml-100k's own fold; {d} holds ratings.csv: use random or time"),
    ({"u.data": GOOD, "u1.base": GOOD}, "u1", DataError, "{d}/u1.test not found beside its pair"),
    ({"u.data": GOOD, "u1.base": GOOD, "u1.test": "1\t2\n"}, "u1", DataError, "{d}/u1.test:1: expected"),
    ({"u.data": "1\t10\t4\t881250949\n"}, "u1", DataError, "{d}: the training split is empty (1 rating(s): 0 valid, 1 test); give more ratings"),
    ({"notes.txt": "nothing here"}, "random", DataError, "no MovieLens ratings file (u.data, ratings.dat or ratings.csv) in {d}"),
]


@pytest.mark.parametrize("files,split,kind,fragment", RATINGS_FILES, ids=[f"{next(iter(c[0]))}-{k}" for k, c in enumerate(RATINGS_FILES)])
def test_ratings_files(tmp_path, files, split, kind, fragment):
    folder = ratings_folder(tmp_path, files)
    with pytest.raises(kind) as err:
        MovieLens(path=str(folder), split=split).load()
    assert fragment.format(d=folder) in str(err.value)
    assert "\n" not in str(err.value)


HEADER = "customer,product,stars,when\n"
TABLES = [
    # (file name, content; None: a directory, absent: no file), extra RatingsFile settings, error type, fragment ("{f}": the file)
    ("shop.csv", "customer,product,score\na,x,4\n", {}, DataError, "{f}: no column 'stars' (data.rating_col); its header has: customer, product, score"),
    ("shop.csv", HEADER + "a,x,4,1\nb,y,3\n", {}, DataError, "{f}:3: expected 4 fields as the header has"),
    ("shop.csv", HEADER + "a,x,five,1\n", {}, DataError, "{f}:2: rating 'five' is not a number"),
    ("shop.csv", HEADER + "a,x,7,1\n", {}, DataError, "{f}:2: rating 7 is outside model.y_range [0, 5.5]"),
    ("shop.csv", HEADER + "a,x,nan,1\n", {}, DataError, "{f}:2: rating nan is outside model.y_range"),
    ("shop.csv", HEADER + ",x,4,1\n", {}, DataError, "{f}:2: empty user id"),
    ("shop.csv", HEADER + "a,x,4,yesterday\n", {"time_col": "when", "split": "time"}, DataError, "{f}:2: time 'yesterday' is neither a number nor an ISO date"),
    (
        "shop.csv",
        "customer,product,stars,part\na,x,4,holdout\n",
        {"split": "file", "split_col": "part"},
        DataError,
        "{f}:2: split 'holdout' is not one of train, valid, test",
    ),
    (
        "shop.csv",
        "customer,product,stars,part\na,x,4,train\n",
        {"split": "file", "split_col": "part"},
        DataError,
        "{f}: no rating is marked test in column 'part'",
    ),
    ("shop.csv", HEADER, {}, DataError, "{f}: no ratings in the file"),
    ("shop.csv", "", {}, DataError, "{f}: no ratings in the file"),
    ("shop.csv", HEADER.encode() + "b\xe9a,x,4,1\n".encode("latin-1"), {}, DataError, "{f}: not UTF-8 text (byte 0xe9; a Latin-1 file?)"),
    ("shop.csv", None, {}, DataError, "{f} is a directory, not a ratings file"),
    ("shop.csv", "absent", {}, DataError, "data.path={f}: no such file"),
    ("shop.txt", HEADER, {}, ConfigError, "data.separator=None: shop.txt is not .csv, .tsv or .parquet"),
    ("shop.parquet", b"PK\x03\x04 not parquet", {}, DataError, "{f}: not a readable Parquet file"),
]


@pytest.mark.parametrize("name,content,settings,kind,fragment", TABLES, ids=[f"{c[0]}-{k}" for k, c in enumerate(TABLES)])
def test_ratings_tables(tmp_path, name, content, settings, kind, fragment):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content != "absent":
        path.write_text(content)
    data = RatingsFile(path=str(path), user_col="customer", item_col="product", rating_col="stars", **settings)
    with pytest.raises(kind) as err:
        data.load()
    assert fragment.format(f=path) in str(err.value)
    assert "\n" not in str(err.value)


def test_several_movielens_folders_are_refused_by_name(tmp_path):
    for name in ("ml-100k", "ml-1m"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "u.data").write_text(GOOD)
    with pytest.raises(DataError, match=r"holds several MovieLens folders \(ml-100k, ml-1m\): set data.path to one of them"):
        MovieLens(path=str(tmp_path), split="random").load()


def test_a_byte_order_mark_and_crlf_line_ends_read_as_the_plain_file(tmp_path):
    plain = read_ratings(ratings_folder(tmp_path, {"u.data": GOOD}) / "u.data", "\t", False, (0.0, 5.5))
    (tmp_path / "bom.data").write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode())
    marked = read_ratings(tmp_path / "bom.data", "\t", False, (0.0, 5.5))
    for field in ("users", "items", "ratings", "timestamps"):
        assert np.array_equal(getattr(marked, field), getattr(plain, field))


@pytest.mark.parametrize("name,fmt", [("u.item", 0), ("movies.dat", 1)])
def test_a_titles_file_with_a_byte_order_mark_reads_as_the_plain_file(tmp_path, name, fmt):
    from stagetune.collab.movielens import FORMATS, read_titles

    text = "10{s}Heat\n20{s}Alien\n".format(s="|" if name == "u.item" else "::")
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    titles = read_titles(tmp_path / name, FORMATS[fmt])
    assert titles[10] == "Heat" and len(titles) == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.lists(st.one_of(st.integers(-5, 10**12), st.floats(allow_nan=True), st.text(max_size=6)), max_size=6), max_size=6))
def test_any_broken_ratings_file_is_read_or_refused_in_one_line(tmp_path, lines):
    path = tmp_path / "u.data"
    path.write_text("".join("\t".join(map(str, fields)) + "\n" for fields in lines), encoding="utf-8")
    try:
        table = read_ratings(path, "\t", False, (0.0, 5.5))
    except DataError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)
        return
    assert len(table.ratings) > 0 and np.all((table.ratings >= 0) & (table.ratings <= 5.5))


# -- images ---------------------------------------------------------------------------------------


def image_tree(root: Path, extra: dict[str, bytes | None] | None = None, splits=("train", "valid"), classes=("a", "b")) -> Path:
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (40, 80, 120)).save(root / split / cls / "1.png")
    for rel, data in (extra or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
    return root


def jpeg_bytes(truncate: float = 1.0) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: int(len(data) * truncate)]


IMAGES = [
    # (extra files, tree options, fragment; "{r}" is the root)
    ({"train/a/bad.jpg": b"not an image"}, {}, "1 unreadable image file(s) in {r}/train: {r}/train/a/bad.jpg"),
    ({"train/a/half.jpg": jpeg_bytes(0.5)}, {}, "1 unreadable image file(s) in {r}/train: {r}/train/a/half.jpg"),
    ({"train/a/head.jpg": jpeg_bytes(0.05)}, {}, "unreadable image file(s) in {r}/train: {r}/train/a/head.jpg"),
    ({"valid/b/empty.png": b""}, {}, "1 unreadable image file(s) in {r}/valid: {r}/valid/b/empty.png"),
    ({"train/a/x.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20}, {}, "unreadable image file(s) in {r}/train"),
    ({"train/c": None}, {}, "empty class folder(s) in {r}/train: c"),
    ({}, {"splits": ("train",)}, "data.root={r}: no valid/ folder"),
    ({}, {"splits": ()}, "data.root={r}: no train/ folder"),
    ({"valid/c/1.png": None}, {"classes": ("a", "b")}, "unreadable image file(s) in {r}/valid"),
    ({"test/a/1.txt": b"text"}, {}, "split {r}/test has no images"),
]


@pytest.mark.parametrize("extra,tree,fragment", IMAGES, ids=[next(iter(c[0]), str(c[1])) for c in IMAGES])
def test_images(tmp_path, extra, tree, fragment):
    root = image_tree(tmp_path / "imgs", extra, **tree)
    with pytest.raises(DataError) as err:
        ImageFolderData(str(root), size=32, augment=False, num_workers=0).setup()
    assert fragment.format(r=root) in str(err.value)


def test_skip_bad_files_leaves_out_a_truncated_jpeg_and_every_epoch_reads(tmp_path):
    """A truncated JPEG passes PIL's verify(); it is found at start-up and left out, so no epoch meets it."""
    root = image_tree(tmp_path / "imgs", {"train/a/half.jpg": jpeg_bytes(0.5)})
    data = ImageFolderData(str(root), size=32, augment=False, skip_bad_files=True, num_workers=0, batch_size=1)
    data.setup()
    assert len(data.splits["train"]) + len(data.splits["test"]) == 2, "no test/ folder: test is carved from train/"
    assert sum(len(x) for x, _ in data.train_dataloader()) == len(data.splits["train"])


def test_a_16_bit_grey_png_keeps_its_grey_levels(tmp_path):
    levels = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I")
        rgb = np.asarray(to_rgb(img))
    assert rgb.shape == (8, 8, 3)
    assert np.array_equal(rgb[..., 0], np.rint(levels / 257).astype(np.uint8))
    root = image_tree(tmp_path / "imgs", {"train/a/g16.png": (tmp_path / "g16.png").read_bytes()})
    data = ImageFolderData(str(root), size=32, augment=False, num_workers=0)
    data.setup()
    folder = data.splits["train"].dataset  # train/ as read, shared by the train and carved test parts
    image, _ = folder[[p for p, _ in folder.samples].index(str(root / "train/a/g16.png"))]
    x = data.eval_transform()(image)
    assert x.std() > 0.1, "not one flat white image"


# -- checkpoints and resume -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("tiny") / "run", "experiment=tiny")


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def checkpoint_file(tmp_path: Path, kind: str, tiny_run: Path) -> str:
    """A file to give as a checkpoint: ``kind`` says how it is broken."""
    last = tiny_run / "checkpoints" / "last.ckpt"
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        path.write_bytes(last.read_bytes()[:200])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "state_dict_only":
        torch.save({"state_dict": torch.load(last, weights_only=True)["state_dict"]}, path)
    elif kind == "tensor":
        torch.save(torch.ones(3), path)
    elif kind == "list":
        torch.save([1, 2], path)
    elif kind == "random_bytes":  # a pickle's protocol mark, then noise
        path.write_bytes(b"\x80\x02" + np.random.default_rng(0).bytes(200))
    elif kind == "plain_pickle":
        import pickle

        path.write_bytes(pickle.dumps({"state_dict": {"w": 1}}, protocol=4))
    elif kind == "pickled_code":
        torch.save({"state_dict": Payload()}, path)
    elif kind == "no_callbacks":
        state = torch.load(last, weights_only=True)
        state.pop("callbacks")
        torch.save(state, path)
    return str(path)


CHECKPOINTS = [
    # (how the checkpoint is broken or which plan continues it, extra overrides, error type, fragment)
    ("truncated", [], StagetuneError, "ckpt_path: {f} is not a readable checkpoint"),
    ("empty", [], StagetuneError, "ckpt_path: {f} is not a readable checkpoint"),
    ("text", [], StagetuneError, "ckpt_path: {f} is not a readable checkpoint"),
    ("state_dict_only", [], StagetuneError, "ckpt_path: {f} is not a stagetune training checkpoint (no stage plan state in it)"),
    ("no_callbacks", [], StagetuneError, "is not a stagetune training checkpoint"),
    ("tensor", [], StagetuneError, "holds a Tensor, not a checkpoint or state dict"),
    ("list", [], StagetuneError, "holds a list, not a checkpoint or state dict"),
    ("pickled_code", [], StagetuneError, "holds pickled code, which stagetune refuses to run (weights_only=True)"),
    ("random_bytes", [], StagetuneError, "ckpt_path: {f} is not a readable checkpoint (its bytes are not a checkpoint torch.save wrote)"),
    ("plain_pickle", [], StagetuneError, "ckpt_path: {f} is not a readable checkpoint (its bytes are not a checkpoint torch.save wrote)"),
    ("last", ["plan=fit_one_cycle"], ConfigError, "made with the stages ['frozen', 'unfrozen']; this plan has ['all']"),
    ("last", ["plan.stages.unfrozen.epochs=5"], ConfigError, "made with plan.stages.unfrozen.epochs=3; this plan has 5"),
    ("last", ["plan.stages.unfrozen.epochs=2"], ConfigError, "made with plan.stages.unfrozen.epochs=3; this plan has 2"),
    ("last", ["plan.stages.frozen.epochs=1"], ConfigError, "made with plan.stages.frozen.epochs=2; this plan has 1"),
    ("dir", [], ConfigError, "a checkpoint file (e.g. RUN/checkpoints/last.ckpt), not a directory"),
]


@pytest.mark.parametrize("kind,overrides,error,fragment", CHECKPOINTS, ids=[f"{c[0]}-{' '.join(c[1])}" for c in CHECKPOINTS])
def test_checkpoints(tmp_path, tiny_run, kind, overrides, error, fragment):
    if kind == "last":
        path = str(tiny_run / "checkpoints" / "last.ckpt")
    elif kind == "dir":
        path = str(tiny_run / "checkpoints")
    else:
        path = checkpoint_file(tmp_path, kind, tiny_run)
    err = job(tmp_path / "run", "experiment=tiny", f"ckpt_path={path}", *overrides)
    assert type(err) is error and fragment.format(f=path) in str(err)
    assert RunDir(tmp_path / "run").metrics()["status"] == "failed"


def run_copy(tiny_run: Path, dest: Path, drop: tuple[str, ...] = (), edit: dict[str, str | bytes] | None = None) -> Path:
    """A copy of the tiny run with files removed or rewritten: a run as a user may leave it."""
    import shutil

    shutil.copytree(tiny_run, dest, ignore=shutil.ignore_patterns(".lock"))
    for name in drop:
        target = dest / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for name, content in (edit or {}).items():
        (dest / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return dest


def unfinished(record: str = '{"status": "failed"}') -> dict:
    return {"metrics.json": record}


RESUMES = [
    # (how the run to resume is left, error type, fragment; "{r}" is the run)
    ({"drop": ("checkpoints",), "edit": unfinished()}, StagetuneError, "resume: {r} has no checkpoint yet (status: failed"),
    ({"drop": ("config.yaml",)}, StagetuneError, "{r} is not a stagetune run directory (no config.yaml)"),
    ({"edit": {**unfinished(), "config.yaml": "model: [unclosed\n"}}, StagetuneError, "{r}/config.yaml is not a readable config"),
    ({"edit": {**unfinished(), "config.yaml": "- a\n- list\n"}}, StagetuneError, "{r}/config.yaml holds a list, not a run's config"),
    ({"edit": {"metrics.json": "{not json"}}, StagetuneError, "{r}/metrics.json is not valid JSON"),
    ({"edit": {"metrics.json": "[1, 2]"}}, StagetuneError, "{r}/metrics.json holds a list, not a run's record"),
    (
        {"edit": {**unfinished(), "checkpoints/last.ckpt": b"PK\x03\x04 truncated"}},
        StagetuneError,
        "resume: {r}/checkpoints/last.ckpt is not a readable checkpoint",
    ),
    ({"edit": {**unfinished(), "config.yaml": "model:\n  _target_: builtins.open\n"}}, StagetuneError, "refusing to build model._target_: builtins.open"),
]


@pytest.mark.parametrize("left,error,fragment", RESUMES, ids=[str(k) for k in range(len(RESUMES))])
def test_resume(tmp_path, tiny_run, left, error, fragment):
    run = run_copy(tiny_run, tmp_path / "run", left.get("drop", ()), left.get("edit"))
    before = (run / "metrics.json").read_bytes() if (run / "metrics.json").exists() else None
    with pytest.raises(StagetuneError) as err:
        run_job(composed(f"resume={run}"), run, [f"resume={run}"])
    RunDir(run).release()
    assert isinstance(err.value, error) and err.value.exit_code == 1 and fragment.format(r=run.resolve()) in str(err.value)
    if before is not None and b"failed" not in before:
        assert (run / "metrics.json").read_bytes() == before, "a run that cannot be resumed is left as it was"


def test_resume_with_other_overrides_and_of_a_completed_run(tmp_path, tiny_run):
    with pytest.raises(ConfigError, match=r"takes no other overrides; refused: seed=1"):
        run_job(composed(f"resume={tiny_run}", "seed=1"), tiny_run, [f"resume={tiny_run}", "seed=1"])
    before = (tiny_run / "metrics.json").read_bytes()
    value = run_job(composed(f"resume={tiny_run}"), tiny_run, [f"resume={tiny_run}"])
    assert value == json.loads(before)["metric"]["best"] and (tiny_run / "metrics.json").read_bytes() == before


# -- runs that stop before the plan's end say why ------------------------------------------------

STOPS = [
    # (overrides, the line printed after the metrics)
    (
        ["callbacks=early_stopping", "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=10"],
        "stopped after 2 of 5 epochs: early stopping: val/loss did not improve by more than 10 for 1 validations",
    ),
    (["+trainer.max_time={seconds: 0}"], "stopped after 0 of 5 epochs: trainer.max_time ran out"),
]


@pytest.mark.parametrize("overrides,line", STOPS, ids=[c[0][0] for c in STOPS])
def test_a_run_stopped_before_the_plans_end_says_what_stopped_it(tmp_path, capsys, overrides, line):
    from stagetune.commands.train import print_outcome

    run = tmp_path / "run"
    cfg = composed("experiment=tiny", *overrides)
    outcome = train(cfg, run, list(overrides))
    RunDir(run).release()
    print_outcome(outcome)
    assert line in capsys.readouterr().err.splitlines()
    record = RunDir(run).metrics()
    assert record["status"] == "completed" and record["epochs"] == record["stopped"]["epoch"] < record["stopped"]["of"] == 5


def test_validation_off_with_a_validation_metric_warns_and_the_training_loss_chooses(tmp_path, caplog):
    no_val = ["trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "plan.stages.unfrozen.epochs=1"]
    with caplog.at_level("WARNING", logger="stagetune"):
        unmeasured = train(composed("experiment=tiny", *no_val), tmp_path / "a", [])
    assert math.isnan(unmeasured.value) and unmeasured.record["best"]["checkpoint"] is None
    assert [r.getMessage() for r in caplog.records if r.name == "stagetune" and r.levelname == "WARNING"] == [
        "trainer.limit_val_batches=0: validation is off, so metric=val/loss is never measured: no best checkpoint is chosen "
        "(the last one is evaluated) and metric.best is NaN; to choose by the training loss set metric=train/loss, or turn validation on"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="stagetune"):
        measured = train(composed("experiment=tiny", *no_val, "metric=train/loss"), tmp_path / "b", [])
    assert math.isfinite(measured.value) and measured.record["best"]["checkpoint"].startswith("checkpoints/best-")
    assert not [r for r in caplog.records if r.name == "stagetune" and r.levelname == "WARNING"]
    RunDir(tmp_path / "a").release()
    RunDir(tmp_path / "b").release()


# -- run directories that move ---------------------------------------------------------------------


def test_lightning_drops_the_best_score_of_a_moved_checkpoint_dir_and_run_checkpoint_keeps_it(tmp_path):
    """Fails loudly when Lightning's ModelCheckpoint state changes: RunCheckpoint rebases exactly these keys."""
    import warnings

    from pytorch_lightning.callbacks import ModelCheckpoint

    from stagetune.runs.assemble import RunCheckpoint

    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    saved = ModelCheckpoint(dirpath=old, monitor="val/loss", save_top_k=2)
    saved.best_model_score, saved.best_model_path = torch.tensor(0.5, dtype=torch.float64), str(old / "best-a.ckpt")
    saved.best_k_models = {str(old / "best-a.ckpt"): torch.tensor(0.5, dtype=torch.float64), str(old / "best-b.ckpt"): torch.tensor(0.75)}
    saved.kth_best_model_path, saved.kth_value, saved.last_model_path = str(old / "best-b.ckpt"), torch.tensor(0.75), str(old / "last.ckpt")
    state = saved.state_dict()
    assert set(state) == {
        "monitor",
        "best_model_score",
        "best_model_path",
        "current_score",
        "dirpath",
        "best_k_models",
        "kth_best_model_path",
        "kth_value",
        "last_model_path",
    }, "Lightning's ModelCheckpoint state changed: check RunCheckpoint"
    plain = ModelCheckpoint(dirpath=new, monitor="val/loss", save_top_k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain.load_state_dict(state)
    assert plain.best_model_score is None, "Lightning now keeps the score of a moved dirpath: RunCheckpoint may go"
    ours = RunCheckpoint(dirpath=new, monitor="val/loss", save_top_k=2)
    ours.load_state_dict(state)
    assert float(ours.best_model_score) == 0.5 and float(ours.kth_value) == 0.75
    assert ours.best_model_path == str(new / "best-a.ckpt") and ours.last_model_path == str(new / "last.ckpt")
    assert ours.kth_best_model_path == str(new / "best-b.ckpt")
    assert {k: float(v) for k, v in ours.best_k_models.items()} == {str(new / "best-a.ckpt"): 0.5, str(new / "best-b.ckpt"): 0.75}


def test_a_copied_run_reads_its_own_best_checkpoint_even_from_an_absolute_record(tmp_path, tiny_run):
    """A record made before paths were relative names the original's file; the copy reads its own, and none falls back to last."""
    copy = run_copy(tiny_run, tmp_path / "copy")
    record = RunDir(copy).metrics()
    assert not Path(record["best"]["checkpoint"]).is_absolute(), "recorded relative to the run directory"
    assert RunDir(copy).checkpoint("best") == copy.resolve() / record["best"]["checkpoint"]
    absolute = {**record, "best": {**record["best"], "checkpoint": str(tmp_path / "gone" / "checkpoints" / Path(record["best"]["checkpoint"]).name)}}
    (copy / "metrics.json").write_text(json.dumps(absolute))
    assert RunDir(copy).checkpoint("best") == copy.resolve() / record["best"]["checkpoint"]


# -- run directories ------------------------------------------------------------------------------


RUN_DIRS = [
    # (the directory a new run is started in, exit code, fragment; "{r}" is it, "{t}" the test's tmp_path)
    ("completed", 2, "{r} already holds a run (status: completed); continue it with `stagetune resume={r}`"),
    ("held", 2, "{r} is being written by another stagetune run (pid 1 on elsewhere); start the new run in another directory"),
    ("under_a_file", 1, "cannot write the run directory {t}/afile/run: Not a directory"),
]


@pytest.mark.parametrize("which,code,fragment", RUN_DIRS, ids=[c[0] for c in RUN_DIRS])
def test_run_directories(tmp_path, tiny_run, which, code, fragment):
    """A directory holding a run, one another process writes, a file in the way: one line each, nothing overwritten."""
    import fcntl

    held = tmp_path / "held"
    held.mkdir()
    fd = os.open(held / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"pid 1 on elsewhere\n")
    (tmp_path / "afile").write_text("")
    run = {"completed": tiny_run, "held": held, "under_a_file": tmp_path / "afile" / "run"}[which]
    before = (tiny_run / "metrics.json").read_bytes()
    try:
        with pytest.raises(StagetuneError) as err:
            run_job(composed("experiment=tiny"), run, [])
    finally:
        os.close(fd)
    assert err.value.exit_code == code and fragment.format(r=run, t=tmp_path) in str(err.value)
    assert (tiny_run / "metrics.json").read_bytes() == before


def test_a_finished_run_leaves_no_lock_and_a_refused_run_leaves_the_holders_lock_as_it_was(tmp_path, tiny_run):
    import fcntl

    assert not (tiny_run / ".lock").exists(), "a finished run removes its .lock"
    held = tmp_path / "held"
    held.mkdir()
    fd = os.open(held / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"pid 1 on elsewhere\n")
        for args in (["experiment=tiny"], [f"resume={tiny_run}"]):
            with pytest.raises(StagetuneError):
                run_job(composed(*args), held, args)
        assert (held / ".lock").read_text() == "pid 1 on elsewhere\n"
    finally:
        os.close(fd)
    RunDir(held).claim_fresh()
    RunDir(held).release()
    assert not (held / ".lock").exists(), "the lock is taken over once its holder is gone, and removed by its new holder"


# -- signals and faults ---------------------------------------------------------------------------


def failing_save(after: int, err: OSError):
    """``AtomicCheckpointIO.save_checkpoint`` that writes ``after`` checkpoints, then raises ``err``."""
    original = AtomicCheckpointIO.save_checkpoint
    calls = []

    def save(self, checkpoint, path, storage_options=None):
        calls.append(path)
        if len(calls) > after:
            raise err
        return original(self, checkpoint, path, storage_options)

    return save


FAULTS = [
    # (what goes wrong, error type or status, fragment; "{r}" is the run)
    (
        "disk full after the first checkpoints",
        OSError(errno.ENOSPC, "No space left on device", "last.ckpt"),
        2,
        "failed",
        "no space left on the device writing last.ckpt; free some space, then continue with: stagetune resume={r}",
    ),
    (
        "disk full at the first checkpoint",
        OSError(errno.ENOSPC, "No space left on device", "best.ckpt"),
        0,
        "failed",
        "no space left on the device writing best.ckpt; free some space, then start the run again",
    ),
    ("quota exceeded", OSError(errno.EDQUOT, "Disk quota exceeded", "last.ckpt"), 1, "failed", "no space left on the device writing last.ckpt"),
    (
        "an I/O error",
        OSError(errno.EIO, "Input/output error"),
        0,
        "failed",
        "OSError: [Errno 5] Input/output error (not a check stagetune makes: the traceback is in {r}/train.log; please report it with that file)",
    ),
]


@pytest.mark.parametrize("what,raised,after,status,fragment", FAULTS, ids=[f[0] for f in FAULTS])
def test_faults(tmp_path, monkeypatch, what, raised, after, status, fragment):
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", failing_save(after, raised))
    run = tmp_path / "run"
    err = job(run, "experiment=tiny")
    assert fragment.format(r=run.resolve()) in str(err) and err.exit_code == 1
    record = RunDir(run).metrics()
    assert (record["status"], record["error"]) == (status, str(err))


def test_ctrl_c_during_set_up_is_an_interrupted_run_with_nothing_to_resume(tmp_path, monkeypatch):
    import stagetune.runs.run as run_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "build", interrupted)
    err = job(tmp_path / "run", "experiment=tiny")
    assert err.exit_code == 128 + signal.SIGINT and err.status == "interrupted"
    assert str(err) == "SIGINT received during set-up, before training started; nothing was trained or saved: start the run again"
    assert RunDir(tmp_path / "run").metrics()["status"] == "interrupted"


@pytest.fixture
def sigterm_guard():
    """SIGTERM that no stagetune handler takes fails the test (in a user's process it would kill it, recording nothing)."""

    def fell_through(signum, frame):
        raise AssertionError("SIGTERM reached the default handler: the process would die with nothing recorded")

    previous = signal.signal(signal.SIGTERM, fell_through)
    yield
    signal.signal(signal.SIGTERM, previous)


def sigterm_first(function):
    """``function`` that first sends this process SIGTERM (its handler runs before ``function`` does)."""

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return function(*args, **kwargs)

    return signalled


BETWEEN_PHASES = [
    # (where the SIGTERM lands, a resume?, what is patched to send it, the line; "{r}" is the run)
    (
        "the Trainer's set-up, before Lightning's handlers",
        False,
        None,
        "SIGTERM received during set-up, before training started; nothing was trained or saved: start the run again",
    ),
    (
        "a resume's set-up",
        True,
        "build",
        "SIGTERM received during set-up, before training went on; nothing new was trained. Continue with: stagetune resume={r}",
    ),
    (
        "between the end of the fit and the evaluation",
        False,
        "evaluate_chosen",
        "SIGTERM received after training finished, before the evaluation of the chosen checkpoint; the training is saved. Continue with: stagetune resume={r}",
    ),
]


@pytest.mark.parametrize("where,resume,patched,line", BETWEEN_PHASES, ids=[c[0] for c in BETWEEN_PHASES])
def test_sigterm_between_phases(tmp_path, tiny_run, monkeypatch, sigterm_guard, where, resume, patched, line):
    import stagetune.runs.run as run_module

    if patched is not None:
        monkeypatch.setattr(run_module, patched, sigterm_first(getattr(run_module, patched)))
    if resume:
        run = run_copy(tiny_run, tmp_path / "run", edit=unfinished('{"status": "interrupted"}'))
        err = job(run, f"resume={run}")
    else:
        run = tmp_path / "run"
        err = job(run, "experiment=tiny", *([] if patched else ["+callbacks.sigterm._target_=tests.tiny.SigtermInTrainerSetup"]))
    assert str(err) == line.format(r=run.resolve())
    assert err.status == "interrupted" and err.exit_code == 128 + signal.SIGTERM
    assert RunDir(run).metrics()["status"] == "interrupted"


def test_a_fault_inside_training_names_itself_and_the_log(tmp_path):
    err = job(tmp_path / "run", "experiment=tiny", "+callbacks.fault._target_=tests.tiny.RaiseAt", "+callbacks.fault.step=3")
    run = (tmp_path / "run").resolve()
    assert str(err) == (
        f"RuntimeError: fault injected at step 3 (not a check stagetune makes: the traceback is in {run}/train.log; please report it with that file)"
    )
    assert isinstance(err.__cause__, RuntimeError), "the traceback logged is the fault's own"


def test_divergence_is_recorded_as_diverged(tmp_path):
    err = job(tmp_path / "run", "experiment=tiny", "model.nan_at_step=4")
    assert err.status == "diverged" and "loss became nan in stage 'frozen', epoch 0, step 4" in str(err)
    assert RunDir(tmp_path / "run").metrics()["status"] == "diverged"


# -- console commands -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ratings_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("ratings") / "run", *RATINGS, "plan.stages.all.epochs=1")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    small = ["data.classes=[0,1]", "data.train_per_class=2", "data.size=8", "data.valid_pct=0.05", "data.test_pct=0.05", "data.batch_size=4"]
    return trained(
        tmp_path_factory.mktemp("digits") / "run", "experiment=digits_scratch", *small, "plan.stages.frozen.epochs=1", "plan.stages.unfrozen.epochs=1"
    )


def command(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    """A console command's exit code and its stderr lines."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


COMMANDS = [
    # (command, argv with {tiny} {ratings} {image} {tmp}, exit code, the last stderr line's fragment)
    (predict, ["{tmp}/nowhere", "x.png"], 1, "stagetune-predict: error: {tmp}/nowhere: no such run directory"),
    (predict, ["{tmp}", "x.png"], 1, "stagetune-predict: error: {tmp} is not a stagetune run directory (no config.yaml)"),
    (predict, ["{tiny}", "x.png"], 1, "stagetune-predict: error: {tiny} is a tiny run, not an image classifier"),
    (predict, ["{tiny}", "x.png", "--ckpt", "middle"], 2, "stagetune-predict: error: argument --ckpt: invalid choice: 'middle'"),
    (predict, ["{tiny}", "x.png", "--device", "tpu"], 2, "stagetune-predict: error: argument --device: invalid choice: 'tpu'"),
    (predict, ["{tiny}", "x.png", "--batch-size", "many"], 2, "stagetune-predict: error: argument --batch-size: invalid int value: 'many'"),
    (predict, ["{tiny}"], 2, "stagetune-predict: error: the following arguments are required: images"),
    (predict, ["{image}", "{tmp}/missing.png"], 1, "stagetune-predict: error: {tmp}/missing.png: no such file or folder"),
    (predict, ["{image}", "{tmp}"], 1, "stagetune-predict: error: no image files in {tmp}"),
    (predict, ["{image}", "{tmp}/bad.png"], 1, "stagetune-predict: error: none of the 1 file(s) could be read as an image"),
    (predict, ["{image}", "{tmp}/good.png", "--batch-size", "0"], 1, "stagetune-predict: error: --batch-size 0: must be >= 1"),
    (predict, ["{image}", "{tmp}/good.png", "--top-k", "0"], 1, "stagetune-predict: error: --top-k 0: must be >= 1"),
    (
        predict,
        ["{image}", "{tmp}/good.png", "--out", "{tmp}/taken.csv"],
        2,
        "stagetune-predict: config error: --out='{tmp}/taken.csv': exists; choose another file, or add --force",
    ),
    (predict, ["{image}", "{tmp}/good.png", "--out", "{tmp}"], 2, "stagetune-predict: config error: --out='{tmp}': is a directory; give a file name"),
    (predict, ["{image}", "{tmp}/good.png", "--out", "{image}/metrics.json"], 2, "is in the records of the run {image} (metrics.json); write elsewhere"),
    (recommend, ["{tmp}/nowhere", "--user", "1"], 1, "stagetune-recommend: error: {tmp}/nowhere: no such run directory"),
    (recommend, ["{tiny}", "--user", "1"], 1, "stagetune-recommend: error: {tiny} is a tiny run, not a rating model"),
    (recommend, ["{image}", "--similar", "1"], 1, "stagetune-recommend: error: {image} is a digits_scratch run, not a rating model"),
    (recommend, ["{ratings}", "--user", "999999"], 1, "stagetune-recommend: error: unknown user 999999: it has no ratings in the run's training data"),
    (recommend, ["{ratings}", "--similar", "-3"], 1, "stagetune-recommend: error: unknown item -3: it has no ratings in the run's training data"),
    (recommend, ["{ratings}", "--user", "1", "-k", "0"], 1, "stagetune-recommend: error: -k 0: must be >= 1"),
    (recommend, ["{ratings}"], 2, "stagetune-recommend: error: one of the arguments --user --similar is required"),
    (recommend, ["{ratings}", "--user", "1", "--similar", "2"], 2, "stagetune-recommend: error: argument --similar: not allowed with argument --user"),
    (recommend, ["{ratings}", "--user", "one"], 1, "stagetune-recommend: error: unknown user one: it has no ratings in the run's training data"),
    (recommend, ["{ratings}", "--user", "1", "--ckpt", "first"], 2, "stagetune-recommend: error: argument --ckpt: invalid choice: 'first'"),
    (export, ["{tmp}/nowhere", "--format", "torchscript"], 1, "stagetune-export: error: {tmp}/nowhere: no such run directory"),
    (export, ["{tiny}", "--format", "pdf"], 2, "stagetune-export: error: argument --format: invalid choice: 'pdf'"),
    (export, ["{tiny}"], 2, "stagetune-export: error: the following arguments are required: --format"),
    (export, ["{tiny}", "--format", "torchscript", "--out", "{tmp}/taken.csv"], 2, "stagetune-export: config error: --out='{tmp}/taken.csv': exists"),
    (export, ["{tiny}", "--format", "torchscript", "--out", "{tmp}"], 2, "stagetune-export: config error: --out='{tmp}': is a directory"),
    (export, ["{tiny}", "--format", "torchscript", "--out", "{tiny}/checkpoints/x.pt"], 2, "is in the records of the run {tiny} (checkpoints)"),
    (export, ["{tmp}", "--format", "onnx", "--out", "{tmp}/m.onnx"], 1, "stagetune-export: error: {tmp} is not a stagetune run directory"),
    (report, ["{tmp}/nowhere"], 1, "stagetune-report: error: {tmp}/nowhere holds no run directories"),
    (report, ["{tmp}"], 1, "stagetune-report: error: {tmp} holds no run directories"),
    (report, ["{tmp}/taken.csv"], 1, "stagetune-report: error: {tmp}/taken.csv holds no run directories"),
    (report, [], 2, "stagetune-report: error: the following arguments are required: sweep_dir"),
]


@pytest.mark.parametrize("main,argv,code,fragment", COMMANDS, ids=[f"{c[0].__name__.rsplit('.', 1)[-1]}-{k}" for k, c in enumerate(COMMANDS)])
def test_commands(request, tmp_path, capsys, main, argv, code, fragment):
    places = {"tmp": str(tmp_path)}
    for name in ("tiny", "ratings", "image"):
        if any(f"{{{name}}}" in a for a in [*argv, fragment]):
            places[name] = str(request.getfixturevalue(f"{name}_run"))
    (tmp_path / "taken.csv").write_text("")
    (tmp_path / "bad.png").write_text("not an image")
    Image.new("RGB", (8, 8), (200, 200, 200)).save(tmp_path / "good.png")
    if main is predict and argv[-1] == "{tmp}":
        for p in tmp_path.iterdir():
            p.unlink()
    got, lines = command(main.main, [a.format(**places) for a in argv], capsys)
    assert got == code, lines
    assert lines and fragment.format(**places) in lines[-1]
    assert not any("Traceback" in line for line in lines)


LR_FIND = [
    (["lr_find.start_lr=0"], "lr_find.start_lr", "must be > 0"),
    (["lr_find.end_lr=1e-8"], "lr_find.end_lr", "must be above lr_find.start_lr"),
    (["lr_find.steps=2"], "lr_find.steps", "must be >= 5"),
    (["lr_find.beta=1"], "lr_find.beta", "[0, 1)"),
    (["lr_find.diverge=1"], "lr_find.diverge", "must be > 1"),
    (["lr_find.stage=nope"], "lr_find.stage", "a stage of the plan: frozen, unfrozen"),
    (["data.batch_size=0"], "data.batch_size", "must be >= 1"),
    (["plan.lr=-1"], "plan.lr", "> 0"),
]


@pytest.mark.parametrize("overrides,key,allowed", LR_FIND, ids=[c[0][0] for c in LR_FIND])
def test_lr_find(tmp_path, overrides, key, allowed):
    from stagetune.runs.range_test import run_range_test

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="lr_find", overrides=[TESTS_CONF, "experiment=tiny", *overrides])
    with pytest.raises(ConfigError) as err:
        run_range_test(cfg, tmp_path / "lr")
    assert err.value.key == key and allowed in str(err.value)


# -- configs made by hypothesis -------------------------------------------------------------------

NUMBERS = st.one_of(st.integers(-3, 5), st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from(["x", "null", "[]", "[1,2,3]"]))
KEYS = [
    "plan.lr",
    "plan.stages.frozen.epochs",
    "plan.stages.unfrozen.pct_start",
    "plan.stages.unfrozen.div",
    "optim.wd",
    "optim.eps",
    "optim.momentum",
    "seed",
    "checkpoint.save_top_k",
    "checkpoint.every_n_epochs",
    "plan.stages.unfrozen.wd",
]


@settings(max_examples=25, deadline=None)
@given(values=st.dictionaries(st.sampled_from(KEYS), NUMBERS, min_size=1, max_size=3))
def test_any_config_is_valid_or_refused_naming_a_key_it_was_given(values):
    overrides = [f"{key}={value}" for key, value in values.items()]
    try:
        cfg = validate(composed("experiment=tiny", *overrides))
    except ConfigError as err:
        assert err.key in values or any(err.key.startswith(k) for k in values), (err.key, overrides)
        assert "\n" not in str(err)
        return
    except Exception as err:
        from hydra.errors import HydraException

        assert isinstance(err, HydraException), (type(err), err)
        return
    assert cfg.plan.lr > 0 and cfg.seed >= 0 and all(s.epochs >= 1 for s in cfg.plan.stages.values())


# -- end to end: the contract of one failed run ---------------------------------------------------

END_TO_END = [
    # (overrides, exit code, line start, status; "{r}" is the run directory)
    (["data.batch_size=0"], 2, "stagetune: config error: data.batch_size=0: must be >= 1", "failed"),
    (
        ["+callbacks.fault._target_=tests.tiny.RaiseAt", "+callbacks.fault.step=3"],
        1,
        "stagetune: error: RuntimeError: fault injected at step 3 (not a check stagetune makes: the traceback is in {r}/train.log",
        "failed",
    ),
    (
        ["+callbacks.sigint._target_=tests.tiny.SignalInSetup"],
        130,
        "stagetune: interrupted: SIGINT received during set-up, before training started; nothing was trained or saved",
        "interrupted",
    ),
    (
        ["+callbacks.sigterm._target_=tests.tiny.SignalOnBuild"],
        143,
        "stagetune: interrupted: SIGTERM received during set-up, before training started; nothing was trained or saved",
        "interrupted",
    ),
    (["trainer=ddp_cpu", "trainer.sync_batchnorm=true"], 2, "stagetune: config error: trainer.sync_batchnorm=True: SyncBatchNorm runs on GPUs only", "failed"),
]


@pytest.mark.parametrize("overrides,code,line,status", END_TO_END, ids=[o[0][0] for o in END_TO_END])
def test_end_to_end(tmp_path, overrides, code, line, status):
    out = run_cli(*TINY, *overrides, "hydra.run.dir=run", cwd=tmp_path)
    run = tmp_path / "run"
    assert out.returncode == code, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    (printed,) = [x for x in out.stderr.splitlines() if x.startswith("stagetune:")]
    assert printed.startswith(line.format(r=run))
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == status and printed.endswith(record["error"])
    log = (run / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and record["error"] in log


def test_resume_of_a_path_that_does_not_exist_makes_no_directory(tmp_path):
    out = run_cli(f"resume={tmp_path}/nowhere", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"stagetune: config error: resume='{tmp_path}/nowhere': no such file or directory"]
    assert not (tmp_path / "nowhere").exists()


RESUME_COMMAND_LINES = [
    # (arguments after resume={r}, exit code, the one line; "{r}" is the run, "{t}" the test's folder)
    (["+foo=1"], 2, "stagetune: config error: resume='{r}': continues the run with its own config.yaml and takes no other overrides; refused: +foo=1"),
    (
        ["hydra.run.dir={t}/other"],
        2,
        "stagetune: config error: resume='{r}': continues the run with its own config.yaml and takes no other overrides; refused: hydra.run.dir={t}/other",
    ),
    ([], 1, "stagetune: error: {t}/notarun is not a stagetune run directory (no config.yaml)"),
]


@pytest.mark.parametrize("args,code,line", RESUME_COMMAND_LINES, ids=["unknown-key", "other-run-dir", "not-a-run"])
def test_a_refused_resume_writes_nowhere(tmp_path, tiny_run, args, code, line):
    (tmp_path / "notarun").mkdir()
    run = tmp_path / "notarun" if not args else tiny_run
    before = sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*"))
    out = run_cli(f"resume={run}", *(a.format(t=tmp_path) for a in args), cwd=tmp_path)
    assert out.returncode == code, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(line.format(r=run, t=tmp_path))
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "other").exists() and not any((tmp_path / "notarun").iterdir()), "nothing written, no train.log"
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before


def test_an_unquoted_path_with_a_space_gets_a_hint_to_quote_it(tmp_path):
    out = run_cli(*TINY, f"data.root={tmp_path}/my", "images", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"stagetune: config error: data.root='{tmp_path}/my images': 'images' is not an override: a value with a space must be quoted, "
        f"e.g. 'data.root={tmp_path}/my images'"
    ]
    assert not (tmp_path / "run").exists()


def test_eval_shows_none_of_lightnings_announcements(tiny_run):
    from tests.helpers.cli import NOISE, run_module

    out = run_module("stagetune.commands.evaluate", str(tiny_run), "--split", "valid", cwd=tiny_run.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    shown = out.stdout + out.stderr
    assert not [noise for noise in NOISE if noise in shown], shown
