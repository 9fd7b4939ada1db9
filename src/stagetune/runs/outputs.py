"""Files the commands write for the user (predictions, exported models), never over anything unasked.

An existing file is refused, and so is any path among a run's records, checkpoints, history and
evaluations (one typo away from ``--out RUN/config.yaml``), unless the user adds ``--force``; a directory is refused with
what to give instead. The checks run before any work, and the file is written beside its name and
moved into place at the end: a failed command leaves no half-written file, and a file that
appeared in the meantime is still not replaced.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from stagetune.errors import ConfigError
from stagetune.runs.rundir import CONFIG, METRICS, RUN_INFO, is_record


def run_record(path: Path) -> tuple[Path, str] | None:
    """The run directory and the record (``config.yaml``, ``checkpoints``, ...) that ``path`` is or lies in."""
    path = path.resolve()
    for parent in path.parents:
        if (parent / CONFIG).is_file() and ((parent / RUN_INFO).is_file() or (parent / METRICS).is_file()):
            part = path.relative_to(parent).parts[0]
            return (parent, part) if is_record(part) else None
    return None


def check_output(out: Path, force: bool, example_name: str, flag: str = "--out") -> Path:
    """``out`` if the command may write it; else one line saying why not and what to do."""
    if out.is_dir():
        raise ConfigError(flag, str(out), f"is a directory; give a file name, e.g. {flag} {out / example_name}")
    if force:
        return out
    record = run_record(out)
    if record is not None:
        run, part = record
        raise ConfigError(flag, str(out), f"is in the records of the run {run} ({part}); write elsewhere, or add --force")
    if os.path.lexists(out):
        raise ConfigError(flag, str(out), "exists; choose another file, or add --force to replace it")
    return out


@contextlib.contextmanager
def output_file(out: Path, force: bool, flag: str = "--out") -> Iterator[Path]:
    """A new file beside ``out`` to write into; at the end it becomes ``out`` (replacing one only with ``force``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp{out.suffix}")  # the suffix: ONNX wants its own
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask's permissions, as open() gives
    try:
        yield tmp
        if force:
            os.replace(tmp, out)
            return
        try:
            os.link(tmp, out)  # fails if out exists: never replaces a file that appeared meanwhile
        except FileExistsError:
            raise ConfigError(flag, str(out), "appeared while it was being written; not replaced (add --force)") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(out):
                raise ConfigError(flag, str(out), "appeared while it was being written; not replaced (add --force)") from None
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
