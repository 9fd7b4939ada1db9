"""Where a study lives and how workers share it: storages, trial handles, counts, heartbeats.

A study's ``storage`` is ``None`` (in this process's memory: one worker only), a URL with a scheme
(``sqlite:///study.db``, ``postgresql://host/db``: Optuna's RDB storage) or a file path (Optuna's
journal storage: an append-only log that every worker on a shared filesystem reads and appends to
under a file lock). Each process opens a storage once and keeps it, so a job that runs in the
worker's own process (Hydra's basic launcher) reaches the very storage its worker asked the trial
from, even in memory.

Workers agree on progress through the storage alone. A trial counts towards ``n_trials`` in every
state except ``FAIL``: a crash or a killed worker gives its slot back. Every worker writes a
heartbeat into each trial it runs (the ``stagetune:heartbeat`` user attribute, a Unix time); a
``RUNNING`` trial whose heartbeat is older than the grace period belongs to a worker that died, and
whichever worker notices marks it failed and queues its parameters once more. Optuna's own
heartbeat exists for RDB storages inside ``Study.optimize`` only; this one works with ask/tell on
every storage.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import RandomSampler
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from stagetune.errors import ConfigError, StagetuneError

log = logging.getLogger("stagetune")

HEARTBEAT = "stagetune:heartbeat"
WORKER = "stagetune:worker"
SURPLUS = "stagetune:surplus"
RETRY_OF = "stagetune:retry_of"

_OPEN: dict[str | None, BaseStorage] = {}
_OPEN_LOCK = threading.Lock()


def is_url(spec: str) -> bool:
    return "://" in spec


def storage_spec(value: str | None) -> str | None:
    """The storage as every worker and job must name it: URLs as given, file paths made absolute."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    return text if is_url(text) else str(Path(text).expanduser().resolve())


def shown(spec: str | None) -> str:
    """The storage as logs and messages print it: a database URL's password hidden."""
    if spec is None:
        return "memory"
    if not is_url(spec):
        return spec
    try:
        return make_url(spec).render_as_string(hide_password=True)
    except ArgumentError:
        return spec


def open_storage(spec: str | None) -> BaseStorage:
    """This process's storage for ``spec`` (see :func:`storage_spec`), opened on first use."""
    with _OPEN_LOCK:
        if spec not in _OPEN:
            _OPEN[spec] = _new_storage(spec)
        return _OPEN[spec]


def _new_storage(spec: str | None) -> BaseStorage:
    if spec is None:
        return InMemoryStorage()
    if is_url(spec):
        return _database(spec)
    path = Path(spec)
    if path.is_dir():
        raise ConfigError("hydra.sweeper.storage", spec, "a journal file path (e.g. study.log) or a database URL, not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _is_journal(path):
        raise ConfigError("hydra.sweeper.storage", spec, "this file exists and is not an Optuna journal; name a new or journal file")
    return JournalStorage(JournalFileBackend(str(path)))


def _database(spec: str) -> RDBStorage:
    """Optuna's RDB storage at a SQLAlchemy URL; an unreachable server or a refused login is one line
    naming the storage with its password hidden."""
    try:
        url = make_url(spec)
    except ArgumentError as err:
        raise ConfigError("hydra.sweeper.storage", spec, f"not a database URL: {err}") from None
    hidden = shown(spec)
    if url.drivername == "postgresql":
        # SQLAlchemy's default PostgreSQL driver is psycopg2; the postgres extra installs psycopg 3.
        url = url.set(drivername="postgresql+psycopg")
    # SQLite serialises writers: wait for the lock rather than fail when workers write at once.
    engine = {"connect_args": {"timeout": 60}} if url.get_backend_name() == "sqlite" else None
    try:
        return _rdb_storage(url.render_as_string(hide_password=False), engine)
    except ImportError as err:
        extra = " (pip install 'stagetune[postgres]')" if url.get_backend_name() == "postgresql" else ""
        raise ConfigError("hydra.sweeper.storage", hidden, f"cannot open this database: {err}{extra}") from None
    except (ValueError, ArgumentError) as err:
        raise ConfigError("hydra.sweeper.storage", hidden, f"cannot open this database: {err}") from None
    except SQLAlchemyError as err:
        cause = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise ConfigError("hydra.sweeper.storage", hidden, f"cannot reach this database: {cause[0] if cause else type(err).__name__}") from None


def _rdb_storage(url: str, engine: dict | None, attempts: int = 5) -> RDBStorage:
    """Optuna's RDB storage; workers started together on a new database race to create its tables
    (PostgreSQL: a duplicate key in ``pg_type``), and the losers open it again once the tables exist."""
    for attempt in range(attempts - 1):
        try:
            return RDBStorage(url, engine_kwargs=engine)
        except IntegrityError:
            time.sleep(0.5 * (attempt + 1))
    return RDBStorage(url, engine_kwargs=engine)


def _is_journal(path: Path) -> bool:
    """A missing or empty file, or one whose first line is a journal record (a JSON object with an op_code)."""
    if not path.exists():
        return True
    with path.open("rb") as f:
        first = f.readline()
    if not first.strip():
        return True
    try:
        return "op_code" in json.loads(first)
    except (ValueError, TypeError):
        return False


def trial_of(spec: str | None, study_name: str, number: int, pruner: optuna.pruners.BasePruner) -> optuna.Trial:
    """The live trial ``number`` of a study, to report intermediate values to and ask about pruning."""
    storage = open_storage(spec)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        where = "this process's memory" if spec is None else shown(spec)
        raise StagetuneError(
            f"the Optuna study {study_name!r} is not in {where}: a job launched away from its worker needs "
            "a shared storage (hydra.sweeper.storage=PATH.log or a database URL)"
        ) from None
    # The sampler is never asked here: the worker suggested every parameter before the job started.
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=RandomSampler(), pruner=pruner)
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Progress:
    """How far a study is towards ``n_trials``, as every worker sees it in the storage."""

    complete: int
    pruned: int
    running: int
    waiting: int
    failed: int  # crashed or killed trials; surplus asks are not counted

    @property
    def taken(self) -> int:
        """Trials that hold a slot of ``n_trials``: every state except failed."""
        return self.complete + self.pruned + self.running + self.waiting


def progress(study: optuna.Study) -> Progress:
    trials = study.get_trials(deepcopy=False)
    count = {state: 0 for state in TrialState}
    surplus = 0
    for t in trials:
        count[t.state] += 1
        surplus += t.state == TrialState.FAIL and bool(t.user_attrs.get(SURPLUS))
    return Progress(
        complete=count[TrialState.COMPLETE],
        pruned=count[TrialState.PRUNED],
        running=count[TrialState.RUNNING],
        waiting=count[TrialState.WAITING],
        failed=count[TrialState.FAIL] - surplus,
    )


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` came after the study already had ``n_trials`` (two workers asked at once).

    Trial numbers are handed out by the storage, so every worker agrees: the first ``n_trials``
    trials that did not fail are the study's, any later one is surplus.
    """
    before = [t for t in study.get_trials(deepcopy=False) if t.number < number and t.state != TrialState.FAIL]
    return len(before) >= n_trials


def last_sign_of_life(trial: FrozenTrial) -> float:
    beat = trial.user_attrs.get(HEARTBEAT)
    if isinstance(beat, (int, float)):
        return float(beat)
    return trial.datetime_start.timestamp() if trial.datetime_start else time.time()


def fail_stale_trials(study: optuna.Study, grace_period: float) -> list[int]:
    """Mark failed every running trial silent for ``grace_period`` s; queue its parameters once more.

    A trial that was itself a retry is not queued again. Returns the numbers of the trials failed here.
    """
    now = time.time()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        silent = now - last_sign_of_life(trial)
        if silent < grace_period:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError, ValueError):
            continue  # another worker got there first
        failed.append(trial.number)
        worker = trial.user_attrs.get(WORKER, "an unknown worker")
        if RETRY_OF in trial.user_attrs or not trial.params:
            log.warning("trial %d of %s went silent for %.0f s: marked failed", trial.number, worker, silent)
            continue
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
        log.warning("trial %d of %s went silent for %.0f s: marked failed, its parameters queued again", trial.number, worker, silent)
    return failed


class Heartbeat:
    """While the block runs, write the time into the trial every ``interval`` s (see the module doc)."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-trial-{trial.number}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trial.set_user_attr(HEARTBEAT, time.time())
            except UpdateFinishedTrialError:
                log.warning("trial %d was marked failed by another worker while it ran here", self.trial.number)
                return

    def __enter__(self) -> "Heartbeat":
        self.trial.set_user_attr(WORKER, worker_name())
        self.trial.set_user_attr(HEARTBEAT, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
