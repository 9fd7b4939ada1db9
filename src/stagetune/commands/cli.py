"""How every console command reports a user's mistake: one line, and an exit code that says its kind.

A :class:`~stagetune.errors.StagetuneError` becomes ``PROG: config error: ...`` (exit 2) or
``PROG: error: ...`` (exit 1; ``interrupted``/``diverged`` name themselves) with no traceback.
Hydra commands get the same through :func:`hydra_task` (inside the task, where the run directory
is known and the failure is recorded) and :func:`hydra_command` (around Hydra, whose own
composition errors — an unknown key or group — exit 2).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from stagetune.app import UnwritableOutput
from stagetune.console import FILE_ONLY, quiet_library_warnings
from stagetune.engine.trainer import check_trainer_overrides
from stagetune.errors import StagetuneError

Recorder = Callable[[str, str], bool]  # (status, message) -> whether the job's directory recorded them
log = logging.getLogger("stagetune")


def status_of(err: StagetuneError) -> str:
    return getattr(err, "status", "failed")


def report_error(prog: str, err: StagetuneError) -> int:
    """Print the one line for ``err`` and return the exit code."""
    status = status_of(err)
    kind = "config error" if err.exit_code == 2 else "error" if status == "failed" else status
    print(f"{prog}: {kind}: {err}", file=sys.stderr)
    return err.exit_code


def one_line_errors(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], None]]:
    """Decorate a ``main(argv) -> exit code``: a StagetuneError is one line and its exit code."""

    def wrap(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], None]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> None:
            quiet_library_warnings()
            try:
                code = main(argv)
            except StagetuneError as err:
                code = report_error(prog, err)
            sys.exit(code)

        return run

    return wrap


def unforeseen(err: Exception, run: Path, log_name: str = "train.log") -> StagetuneError:
    """The one line for an exception no check caught: a full disk says how to go on; anything else
    names itself and the log (``run/log_name``) that holds its traceback."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        last = run / "checkpoints" / "last.ckpt"
        then = f"continue with: stagetune resume={run}" if last.exists() else "start the run again"
        return StagetuneError(f"no space left on the device writing {err.filename or run}; free some space, then {then}")
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return StagetuneError(
        f"{type(err).__name__}{': ' + first if first else ''} (not a check stagetune makes: the traceback is in "
        f"{run / log_name}; please report it with that file)"
    )


class _Task:
    """Whether Hydra got as far as calling the task (else a failure is a composition error)."""

    started = False


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def hydra_task(prog: str, record: Recorder | None = None) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Decorate a Hydra task: a StagetuneError, or any error outside a sweep, is one line, recorded by
    ``record(status, message)``, with its traceback (and its cause's) in the job's log file only; a
    job whose directory records nothing (a refused resume: another run's) gets nothing in its log.

    In a sweep the job returns NaN so the other jobs still run; alone it exits with the error's code.
    """

    def wrap(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
        @functools.wraps(task)
        def run(cfg: Any) -> Any:
            _Task.started = True
            try:
                return task(cfg)
            except Exception as raised:
                if isinstance(raised, StagetuneError):
                    err = raised
                elif in_multirun():
                    raise
                else:
                    job = HydraConfig.get()
                    err = unforeseen(raised, Path(job.runtime.output_dir).resolve(), f"{job.job.name}.log")
                code = report_error(prog, err)
                recorded = record(status_of(err), str(err)) if record is not None else True
                if recorded and log.hasHandlers():  # the job's log file (never Python's last-resort handler, the terminal)
                    log.error("%s: %s", prog, err, exc_info=raised, extra=FILE_ONLY)
                if in_multirun():
                    return math.nan
                sys.exit(code)

        return run

    return wrap


def hydra_command(prog: str, app: Callable[[], Any]) -> None:
    """Run a Hydra app; a failure before its task starts (bad override, unknown group) exits 2."""
    quiet_library_warnings()
    try:
        check_trainer_overrides(sys.argv[1:])
    except StagetuneError as err:
        sys.exit(report_error(prog, err))
    try:
        app()
    except SystemExit as exit_:
        if exit_.code == 1 and not _Task.started and not isinstance(exit_, UnwritableOutput):
            raise SystemExit(2) from None
        raise


def print_config_tree(cfg: DictConfig, file: Any = None) -> None:
    """``print_config=true``: the composed config, one branch per top-level key (a rich tree when
    rich is installed, else indented YAML under each key's name)."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.syntax import Syntax
        from rich.tree import Tree
    except ImportError:
        for key, value in cfg.items():
            body = OmegaConf.to_yaml(value) if isinstance(value, DictConfig) else f"{value}\n"
            print(f"{key}:", file=file)
            print("".join(f"  {line}\n" for line in body.splitlines()), end="", file=file)
        return
    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        body = OmegaConf.to_yaml(value) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(Syntax(body, "yaml"))
    Console(file=file).print(tree)
