"""Optuna studies on a real PostgreSQL server: workers on many machines share one study through it."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from stagetune.sweeps.study import RETRY_OF, WORKER
from tests.helpers.sweeps import TINY
from tests.test_optuna_study import FAST_HEARTBEAT, RATINGS, finish, ran_by, stagetune

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load(url: str, name: str = "ratings_synthetic") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg://", 1))


def test_two_workers_started_together_share_one_study_on_postgres(postgres, tmp_path):
    url = postgres.create_database("two_workers")
    shared = [*RATINGS, "hydra.sweeper.n_trials=6", f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    workers = [stagetune("-m", *shared, cwd=tmp_path / f"w{k}") for k in range(2)]
    logs = [finish(w) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    trials = load(url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6, "no point ran twice"
    ran = [ran_by(log) for log in logs]
    assert sorted(ran[0] + ran[1]) == list(range(6)) and all(ran), ran  # both worked, none twice, none lost
    assert len({t.user_attrs[WORKER] for t in trials}) == 2
    for t in trials:
        metrics = json.loads((tmp_path / "sweep" / str(t.number) / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["metric"]["best"] == pytest.approx(t.value)
    assert "6 complete, 0 pruned, 0 failed" in (tmp_path / "sweep" / "study.md").read_text()


def test_a_worker_killed_mid_trial_and_restarted_meets_the_budget_on_postgres(postgres, tmp_path):
    url = postgres.create_database("killed_worker")
    shared = [*RATINGS, "hydra.sweeper.n_trials=4", *FAST_HEARTBEAT, f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    marker = tmp_path / "killed"
    kill = ["+callbacks.kill._target_=tests.tiny.KillAt", "+callbacks.kill.step=3", f"+callbacks.kill.marker={marker}"]
    doomed = stagetune("-m", *shared, *kill, cwd=tmp_path / "a")
    other = stagetune("-m", *shared, cwd=tmp_path / "b")
    doomed_log = finish(doomed)
    assert doomed.returncode == -9 and marker.exists(), doomed_log[-2000:]
    restarted = stagetune("-m", *shared, *kill, cwd=tmp_path / "a")  # the marker stands: this time it runs on
    logs = [finish(other), finish(restarted)]
    assert [other.returncode, restarted.returncode] == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    trials = load(url).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 1, states
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    (retry,) = [t for t in trials if t.user_attrs.get(RETRY_OF) == failed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == failed.params
    assert "4 complete, 0 pruned, 1 failed" in (tmp_path / "sweep" / "study.md").read_text()


def test_a_bad_trial_is_recorded_pruned_on_postgres(postgres, tmp_path):
    url = postgres.create_database("pruning")
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
        f"hydra.sweeper.storage={url}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    log = finish(proc)
    assert proc.returncode == 0, log[-3000:]

    good, also_good, bad = load(url).get_trials()
    assert (good.state, also_good.state, bad.state) == (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED)
    assert bad.params["plan.lr"] == 1e-6 and max(bad.intermediate_values) < 2, "pruned before the last epoch"
    assert json.loads((tmp_path / "sweep" / "2" / "metrics.json").read_text())["status"] == "pruned"
    assert "2 complete, 1 pruned, 0 failed" in (tmp_path / "sweep" / "study.md").read_text()


@pytest.mark.parametrize("where", ["wrong password", "unreachable server"])
def test_a_storage_that_refuses_or_is_down_is_one_line_without_the_password(postgres, tmp_path, where):
    url = postgres.create_database(where.replace(" ", "_"))
    if where == "wrong password":
        url = postgres.url(where.replace(" ", "_"), password="not-the-password")
        secret = "not-the-password"
    else:
        url = url.replace(f":{postgres.port}/", ":1/")
        secret = postgres.password
    proc = stagetune("-m", *TINY, "sweep=optuna", "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={url}", cwd=tmp_path)
    log = finish(proc)
    assert proc.returncode == 2, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("stagetune:")]
    assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
    assert errors[0].startswith("stagetune: config error: hydra.sweeper.storage='postgresql://stagetune:***@127.0.0.1:"), errors[0]
    assert "cannot reach this database" in errors[0]
    assert ("password authentication failed" if where == "wrong password" else "Connection refused") in errors[0]
    assert secret not in log
