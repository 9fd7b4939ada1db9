"""Optuna studies shared by workers: counting across processes, pruning, dead workers, DDP trials."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from stagetune.commands.report import main as report_main
from stagetune.errors import ConfigError
from stagetune.runs.rundir import RunDir
from stagetune.sweeps.sampler import TrialSeeded
from stagetune.sweeps.space import search_space
from stagetune.sweeps.study import HEARTBEAT, RETRY_OF, SURPLUS, fail_stale_trials, is_surplus, open_storage, progress, storage_spec
from tests.helpers.sweeps import ROOT, TINY

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Two epochs of 2,000 ratings: a trial of a second or two, long enough for workers to overlap.
RATINGS = [*TINY, "data.n_ratings=2000", "plan.stages.all.epochs=2", "sweep=optuna"]
FAST_HEARTBEAT = ["hydra.sweeper.heartbeat_interval=0.5", "hydra.sweeper.grace_period=3"]


def stagetune(*args: str, cwd: Path) -> subprocess.Popen:
    """``stagetune ARGS`` as a user starts it, in the background, one thread for torch."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "stagetune", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def ran_by(log: str) -> list[int]:
    line = next(line for line in log.splitlines() if "this worker ran trials" in line)
    listed = line.split("this worker ran trials", 1)[1].strip()
    return [] if listed == "none" else [int(n) for n in listed.split(",")]


def journal(path: Path, name: str = "ratings_synthetic") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path))))


# --- the search space, the sampler, the storage's bookkeeping (in process) ---------------------


def test_search_space_reads_the_sweep_grammar_and_mappings():
    space = search_space(
        {
            "optim.wd": "tag(log, interval(1e-4, 1e-1))",
            "plan.lr": "interval(0.001, 0.1)",
            "model.n_factors": "range(8, 65, 8)",
            "optim.name": "choice(adam, sgd)",
            "data.batch_size": {"type": "int", "low": 32, "high": 256, "log": True},
        },
        ["experiment=ratings_synthetic", "plan.lr=0.01"],
    )
    assert space.distributions == {
        "optim.wd": FloatDistribution(1e-4, 1e-1, log=True),
        "model.n_factors": IntDistribution(8, 64, step=8),
        "optim.name": CategoricalDistribution(["adam", "sgd"]),
        "data.batch_size": IntDistribution(32, 256, log=True),
    }
    assert space.fixed == ["experiment=ratings_synthetic", "plan.lr=0.01"]  # the command line fixes plan.lr
    with pytest.raises(ConfigError, match="hydra.sweeper.params.x.type"):
        search_space({"x": {"type": "normal", "low": 0, "high": 1}}, [])
    with pytest.raises(ConfigError, match="grid sampler"):
        search_space({"x": "interval(0, 1)"}, []).grid()


def test_workers_with_one_seed_never_draw_the_same_point_and_trials_repeat_by_number(tmp_path):
    storage = open_storage(storage_spec(str(tmp_path / "study.log")))
    make = lambda seed: optuna.samplers.RandomSampler(seed=seed)  # noqa: E731
    workers = [optuna.create_study(study_name="s", storage=storage, sampler=TrialSeeded(make, 7), load_if_exists=True) for _ in range(2)]
    drawn = {}
    for k in range(6):
        trial = workers[k % 2].ask()
        drawn[trial.number] = trial.suggest_float("x", 0, 1)
        workers[k % 2].tell(trial, drawn[trial.number])
    assert len(set(drawn.values())) == 6
    alone = optuna.create_study(sampler=TrialSeeded(make, 7))
    for number in range(6):
        assert alone.ask().suggest_float("x", 0, 1) == drawn[number]


def test_a_silent_running_trial_is_failed_and_its_parameters_queued_once(tmp_path):
    study = optuna.create_study(study_name="s", storage=open_storage(storage_spec(str(tmp_path / "silent.log"))))
    silent, alive = study.ask(), study.ask()
    for trial, beat in ((silent, time.time() - 100), (alive, time.time())):
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr(HEARTBEAT, beat)
    assert fail_stale_trials(study, grace_period=10) == [silent.number]
    trials = study.get_trials()
    assert trials[silent.number].state == TrialState.FAIL and trials[alive.number].state == TrialState.RUNNING
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.user_attrs[RETRY_OF] == silent.number
    assert study.ask().suggest_float("x", 0, 1) == silent.params["x"]  # the next ask runs it
    assert fail_stale_trials(study, grace_period=10) == []
    assert progress(study).failed == 1 and progress(study).taken == 2


def test_a_trial_asked_after_the_study_is_full_is_surplus():
    study = optuna.create_study()
    first, second, late = study.ask(), study.ask(), study.ask()
    assert not is_surplus(study, second.number, n_trials=2)
    assert is_surplus(study, late.number, n_trials=2)
    study.tell(first, state=TrialState.FAIL)  # a failure gives its slot back
    assert not is_surplus(study, late.number, n_trials=2)
    late.set_user_attr(SURPLUS, True)
    study.tell(late, state=TrialState.FAIL)
    assert progress(study).failed == 1


# --- workers as users start them ----------------------------------------------------------------


def test_two_workers_on_one_journal_study_complete_six_distinct_trials(tmp_path):
    shared = [*RATINGS, "hydra.sweeper.n_trials=6", f"hydra.sweeper.storage={tmp_path / 'study.log'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    workers = [stagetune("-m", *shared, cwd=tmp_path / f"w{k}") for k in range(2)]
    logs = [finish(w) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    trials = journal(tmp_path / "study.log").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6, "no point ran twice"
    ran = [ran_by(log) for log in logs]
    assert sorted(ran[0] + ran[1]) == list(range(6)) and all(ran), ran  # both worked, none twice
    assert len({t.user_attrs["stagetune:worker"] for t in trials}) == 2
    for t in trials:
        metrics = json.loads((tmp_path / "sweep" / str(t.number) / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert metrics["metric"]["best"] == pytest.approx(t.value)
        assert t.user_attrs["valid"] == {"val/rmse": pytest.approx(t.value)}
    rows = list(csv.DictReader((tmp_path / "sweep" / "study.csv").open()))
    assert [r["state"] for r in rows] == ["complete"] * 6  # the last worker to end reports the whole study
    assert "6 complete, 0 pruned, 0 failed" in (tmp_path / "sweep" / "study.md").read_text()


def test_a_deliberately_bad_trial_is_pruned_before_its_last_epoch(tmp_path):
    db = tmp_path / "study.db"
    enqueue = "hydra.sweeper.enqueue=[{plan.lr:0.03,optim.wd:0.01},{plan.lr:0.02,optim.wd:0.01},{plan.lr:1e-6,optim.wd:0.01}]"
    proc = stagetune(
        "-m",
        *TINY,
        "data.n_ratings=2000",
        "plan.stages.all.epochs=3",
        "sweep=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pruner.n_startup_trials=2",
        enqueue,
        f"hydra.sweeper.storage=sqlite:///{db}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    log = finish(proc)
    assert proc.returncode == 0, log[-3000:]

    study = optuna.load_study(study_name="ratings_synthetic", storage=f"sqlite:///{db}")
    good, also_good, bad = study.get_trials()
    assert (good.state, also_good.state, bad.state) == (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED)
    assert bad.params["plan.lr"] == 1e-6
    assert max(bad.intermediate_values) < 2, "pruned before the last epoch (epoch 2)"
    assert sorted(good.intermediate_values) == [0, 1, 2]
    metrics = json.loads((tmp_path / "sweep" / "2" / "metrics.json").read_text())
    assert metrics["status"] == "pruned" and metrics["epochs"] < 3
    assert metrics["metric"]["last"] == pytest.approx(bad.intermediate_values[max(bad.intermediate_values)])
    assert "stagetune: pruned: trial 2" in log and "Traceback" not in log
    assert [r["status"] for r in csv.DictReader((tmp_path / "sweep" / "summary.csv").open())] == ["completed", "completed", "pruned"]
    assert "2 complete, 1 pruned, 0 failed" in (tmp_path / "sweep" / "study.md").read_text()
    events = EventAccumulator(str(RunDir(tmp_path / "sweep" / "2").tensorboard)).Reload()
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["status"].string_value == "pruned"


def test_a_worker_killed_mid_trial_leaves_a_failed_trial_that_the_other_worker_runs_again(tmp_path):
    shared = [*RATINGS, "hydra.sweeper.n_trials=4", *FAST_HEARTBEAT, f"hydra.sweeper.storage={tmp_path / 'study.log'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    marker = tmp_path / "killed"
    doomed = stagetune(
        "-m", *shared, "+callbacks.kill._target_=tests.tiny.KillAt", "+callbacks.kill.step=3", f"+callbacks.kill.marker={marker}", cwd=tmp_path / "a"
    )
    survivor = stagetune("-m", *shared, cwd=tmp_path / "b")
    doomed_log = finish(doomed)
    log = finish(survivor)
    assert doomed.returncode == -9 and marker.exists(), doomed_log[-2000:]
    assert survivor.returncode == 0, log[-3000:]

    trials = journal(tmp_path / "study.log").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["stagetune:worker"] != trials[-1].user_attrs["stagetune:worker"]
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retry = [t for t in trials if t.user_attrs.get(RETRY_OF) == failed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == failed[0].params
    assert "1 failed" in (tmp_path / "sweep" / "study.md").read_text()


def test_a_ddp_trial_trains_the_same_parameters_on_both_ranks_and_is_pruned_on_both(tmp_path):
    dumps = tmp_path / "dumps"
    proc = stagetune(
        "-m",
        f"hydra.searchpath=[file://{ROOT}/tests/conf]",
        "experiment=tiny",
        "trainer=ddp_cpu",
        "sweep=optuna",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.storage={tmp_path / 'study.log'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        # prune at the third validation (epoch 2, the first unfrozen one): val/loss > 0 always
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
        "+hydra.sweeper.pruner.upper=0.0",
        "+hydra.sweeper.pruner.n_warmup_steps=2",
        "+callbacks.weights._target_=tests.tiny.StateDump",
        f"+callbacks.weights.out={dumps}",
        "+callbacks.optim._target_=tests.tiny.OptimizerDump",
        f"+callbacks.optim.out={dumps}",
        cwd=tmp_path,
    )
    log = finish(proc)
    assert proc.returncode == 0, log[-4000:]

    (trial,) = journal(tmp_path / "study.log", "tiny").get_trials()
    assert trial.state == TrialState.PRUNED and sorted(trial.intermediate_values) == [0, 1, 2]
    metrics = json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())
    assert metrics["status"] == "pruned" and metrics["pruned"]["epoch"] == 2
    for epoch in (0, 1):
        groups = [json.loads((dumps / f"rank{r}-epoch{epoch}.json").read_text()) for r in (0, 1)]
        assert groups[0] == groups[1], f"epoch {epoch}: the ranks' optimizers differ"
        decays = sorted({g["weight_decay"] for g in groups[0]} - {0.0})
        assert decays == [pytest.approx(trial.params["optim.wd"])], "the trial's weight decay on every rank"
        weights = [torch.load(dumps / f"rank{r}-epoch{epoch}.pt") for r in (0, 1)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert sorted(p.name for p in dumps.glob("*epoch2*")) == [], "both ranks stopped in epoch 2's validation"


def test_the_basic_launcher_runs_one_trial_at_a_time(tmp_path):
    proc = stagetune("-m", *RATINGS, "hydra.sweeper.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    log = finish(proc)
    assert proc.returncode == 2
    assert "stagetune: config error: hydra.sweeper.n_jobs=2: the basic launcher runs one job at a time" in log


def test_a_restarted_worker_continues_the_study_and_asks_only_for_what_is_missing(tmp_path):
    shared = [*TINY, "sweep=optuna", f"hydra.sweeper.storage={tmp_path / 'study.log'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = stagetune("-m", *shared, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert ran_by(finish(first)) == [0, 1] and first.returncode == 0
    again = stagetune("-m", *shared, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    log = finish(again)
    assert again.returncode == 0 and ran_by(log) == [2], log[-3000:]
    trials = journal(tmp_path / "study.log").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    (tmp_path / "sweep" / "study.md").unlink()
    with pytest.raises(SystemExit) as done:  # stagetune-report reads the study from its journal
        report_main([str(tmp_path / "sweep")])
    assert done.value.code == 0
    assert "3 complete, 0 pruned, 0 failed" in (tmp_path / "sweep" / "study.md").read_text()
