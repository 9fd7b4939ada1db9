"""One failure policy for every stagetune process: one line and an exit code that says its kind.

A :class:`~stagetune.errors.StagetuneError` becomes ``PROG: config error: ...`` (exit 2) or
``PROG: error: ...`` (exit 1; ``interrupted``/``diverged`` name themselves) with no traceback; its
status is recorded once, by the process that owns the run directory, and its traceback goes to the
job's log file only. An exception no check foresaw is the same line naming the log that holds it.
In a sweep, a job's failure is recorded and the job returns NaN, so the other jobs still run.

:func:`task_wrapper` applies the policy to a task (every console command, the DDP worker, a Hydra
job, the sweeper); :func:`user_errors` is its first half, the translation of any failure into the
:class:`StagetuneError` a user reads; :func:`hydra_command` runs a Hydra app, whose own composition
errors (an unknown key or group) exit 2.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stagetune.console import FILE_ONLY, quiet_library_lines, quiet_library_warnings
from stagetune.errors import Interrupted, StagetuneError

Recorder = Callable[[str, str], bool]  # (status, message) -> whether the job's directory recorded them
log = logging.getLogger("stagetune")


def report_error(prog: str, err: StagetuneError) -> int:
    """Print the one line for ``err`` and return the exit code."""
    kind = "config error" if err.exit_code == 2 else "error" if err.status == "failed" else err.status
    print(f"{prog}: {kind}: {err}", file=sys.stderr)
    return err.exit_code


def unforeseen(err: Exception, log_file: Path) -> StagetuneError:
    """The one line for an exception no check caught: a full disk says how to go on; anything else
    names itself and the log that holds its traceback."""
    run = log_file.parent
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        last = run / "checkpoints" / "last.ckpt"
        then = f"continue with: stagetune resume={run}" if last.exists() else "start the run again"
        return StagetuneError(f"no space left on the device writing {err.filename or run}; free some space, then {then}")
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return StagetuneError(
        f"{type(err).__name__}{': ' + first if first else ''} (not a check stagetune makes: the traceback is in {log_file}; please report it with that file)"
    )


def in_multirun() -> bool:
    """Whether this process runs the jobs of a Hydra sweep (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def hydra_job_log() -> Path:
    """The Hydra job's log file (``<job>.log`` in its output directory), which keeps a failure's traceback."""
    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get()
    return Path(job.runtime.output_dir).resolve() / f"{job.job.name}.log"


@contextmanager
def user_errors(log_file: Path | None = None, interrupted: str | None = None) -> Iterator[None]:
    """Raise every failure inside as the StagetuneError a user reads.

    ``interrupted`` is the message for a Ctrl-C (SIGINT) that reaches here: one ``interrupted`` line
    instead of a traceback. An unforeseen exception becomes :func:`unforeseen`'s line where
    ``log_file`` keeps its traceback; without one it stays itself, its traceback the only record.
    """
    try:
        yield
    except StagetuneError:
        raise
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        raise Interrupted(interrupted, signal.SIGINT) from None
    except Exception as err:
        if log_file is None:
            raise
        raise unforeseen(err, log_file) from err


def task_wrapper(
    prog: str,
    record: Recorder | None = None,
    log_file: Callable[[], Path | None] | None = None,
    interrupted: str | None = None,
    quiet: Callable[[], bool] | None = None,
    sweep_job: Callable[[], bool] = lambda: in_multirun(),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a task with the policy.

    ``record(status, message)`` keeps a failure in the run directory (the task's owner only);
    ``log_file()`` is the log that holds tracebacks (a Hydra job's ``<job>.log``); ``quiet()`` says
    this process is not the one that speaks (a DDP rank other than 0: rank 0 reports for all);
    ``sweep_job()`` says the task is one job of a sweep (the sweeper itself is not).
    Alone, the task exits with the error's code; a sweep's job returns NaN.
    """

    def wrap(task: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(task)
        def run(*args: Any, **kwargs: Any) -> Any:
            quiet_library_warnings()
            where = log_file() if log_file is not None else None
            sweep = sweep_job()
            try:
                with user_errors(None if sweep else where, interrupted):
                    return task(*args, **kwargs)
            except StagetuneError as err:
                return _failed(prog, err, record, where, sweep, quiet is not None and quiet())
            except Exception as raised:
                if not sweep:
                    raise
                log.exception("job failed")
                if record is not None:
                    record("failed", f"{type(raised).__name__}: {raised}")
                return math.nan

        return run

    return wrap


def _failed(prog: str, err: StagetuneError, record: Recorder | None, log_file: Path | None, sweep: bool, quiet: bool) -> Any:
    if not quiet:
        report_error(prog, err)
    recorded = record(err.status, str(err)) if record is not None else True
    if recorded and log_file is not None and log.hasHandlers():  # the job's log file (never Python's last-resort handler, the terminal)
        log.error("%s: %s", prog, err, exc_info=err, extra=FILE_ONLY)
    if sweep:
        return math.nan
    sys.exit(err.exit_code)


def console_command(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], None]]:
    """Decorate a ``main(argv) -> exit code`` with the policy; the process exits with the code."""

    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], None]:
        guarded = task_wrapper(prog)(main)

        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> None:
            quiet_library_lines()
            sys.exit(guarded(argv))

        return run

    return wrap


class _Task:
    """Whether Hydra got as far as calling the task (else a failure is a composition error)."""

    started = False


def task_started(task: Callable[..., Any]) -> Callable[..., Any]:
    """Mark, for :func:`hydra_command`, that Hydra called the task (its failures are the task's)."""

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        _Task.started = True
        return task(*args, **kwargs)

    return run


def hydra_command(prog: str, app: Callable[[], Any], checks: Callable[[], None] | None = None) -> None:
    """Run a Hydra app; ``checks()`` first (one line each); a failure before its task starts (bad
    override, unknown group) exits 2."""
    from stagetune.app import UnwritableOutput

    quiet_library_warnings()
    try:
        if checks is not None:
            checks()
    except StagetuneError as err:
        sys.exit(report_error(prog, err))
    try:
        app()
    except SystemExit as exit_:
        if exit_.code == 1 and not _Task.started and not isinstance(exit_, UnwritableOutput):
            raise SystemExit(2) from None
        raise
