"""Where the configs live, and the resolvers they use.

Every Hydra entry point (``stagetune``, ``stagetune-lr-find``) imports this module first, so the
``${mul:...}``, ``${stagetune.run_dir:...}`` interpolations resolve the same way everywhere, and
``paths.root`` / ``paths.cache`` (``conf/paths/``) are absolute wherever the command is started.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from stagetune.engine.learning_rate import mul

PACKAGE_DIR = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The ``conf/`` directory: the source tree's (editable installs) or the one in the wheel."""
    for candidate in (PACKAGE_DIR.parents[1] / "conf", PACKAGE_DIR / "conf"):
        if (candidate / "train.yaml").exists():
            return candidate
    raise RuntimeError(f"stagetune's conf/ directory was not found next to {PACKAGE_DIR}")


# The console commands ([project.scripts] in pyproject.toml; tests/test_help.py keeps the two equal),
# each with the line `stagetune --help` shows for it.
COMMANDS = {
    "stagetune": "train a run, or a sweep with -m (this command)",
    "stagetune-lr-find": "the LR range test for one stage of an experiment's plan",
    "stagetune-plan": "the plan of a config as a table: stages, epochs, each layer group's params, LR and wd",
    "stagetune-report": "summary.csv/md/png of a sweep directory",
    "stagetune-eval": "evaluate a trained run's checkpoint on its valid or test split",
    "stagetune-show": "pictures of a run's data and results (batch, results, confused, biases, user)",
    "stagetune-predict": "classify image files with a trained run",
    "stagetune-recommend": "recommend items with a trained ratings run",
    "stagetune-export": "write a trained run's model as TorchScript or ONNX",
}


def commands_help() -> str:
    """The commands as ``--help`` lists them, one per line."""
    width = max(map(len, COMMANDS))
    return "\n".join(f"  {name:<{width}}  {about}" for name, about in COMMANDS.items())


ROOT_ENV = "STAGETUNE_ROOT"
CACHE_ENV = "STAGETUNE_CACHE"


def is_project(path: Path) -> bool:
    """A stagetune checkout (or a project laid out like one): ``conf/train.yaml`` beside ``pyproject.toml``."""
    return (path / "conf" / "train.yaml").is_file() and (path / "pyproject.toml").is_file()


def project_root() -> str:
    """``paths.root``: ``$STAGETUNE_ROOT``, else the nearest project above the working directory, else it.

    Absolute, so runs started from a subdirectory of the project (``src/``, ``notebooks/``) land in
    the same ``outputs/`` as runs started at its top.
    """
    if os.environ.get(ROOT_ENV):
        return str(Path(os.environ[ROOT_ENV]).expanduser().resolve())
    cwd = Path.cwd().resolve()
    return str(next((p for p in (cwd, *cwd.parents) if is_project(p)), cwd))


def user_cache() -> str:
    """``paths.cache``: ``$STAGETUNE_CACHE``, else ``$XDG_CACHE_HOME/stagetune``, else ``~/.cache/stagetune``.

    Made-once artifacts (the digits source model) live here, outside any project, so every working
    directory and every checkout finds the same file instead of training it again.
    """
    if os.environ.get(CACHE_ENV):
        return str(Path(os.environ[CACHE_ENV]).expanduser().resolve())
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return str((base / "stagetune").resolve())


class UnwritableOutput(SystemExit):
    """The run directory cannot be created: a runtime failure (exit 1), reported in one line."""


def _writable(path: str) -> str:
    """``path``, created if need be; if it cannot be, stop with one line saying why.

    The probe file has a name of its own: the workers of one study start at once into one sweep
    directory, and a shared name let one worker delete the probe another was about to remove.
    """
    target = Path(path).resolve()
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=target, prefix=".stagetune-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        print(
            f"stagetune: error: cannot write the run directory {target}: {err.strerror or err}; "
            "run from a writable directory or choose one with hydra.run.dir=DIR (sweeps: hydra.sweep.dir=DIR)",
            file=sys.stderr,
        )
        raise UnwritableOutput(1) from None
    return path


def check_output_overrides(argv: list[str]) -> None:
    """Check a run or sweep directory given on the command line before Hydra tries to create it."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            _writable(value.strip("'\""))


def _run_dir(resume: str | None, fresh: str) -> str:
    """``hydra.run.dir``: the directory being resumed, else a fresh timestamped one."""
    return str(Path(resume).resolve()) if resume else fresh


def _config_subdir(resume: str | None, output_dir: str) -> str | None:
    """Where Hydra saves its view of the config: nowhere when resuming, or when ``output_dir`` holds
    a run already (a new run there is refused: its first records stay as they were)."""
    return None if resume or (Path(output_dir) / "config.yaml").exists() else ".hydra"


def _debug_prefix(debug: str | None) -> str:
    """``debug/`` for a ``debug=NAME`` run, so checks never sit among the results in ``outputs/``."""
    return "debug/" if debug else ""


def register_resolvers() -> None:
    resolvers = {
        "mul": mul,
        "stagetune.run_dir": _run_dir,
        "stagetune.config_subdir": _config_subdir,
        "stagetune.writable": _writable,
        "stagetune.direction": lambda mode: {"min": "minimize", "max": "maximize"}[mode],
        "stagetune.project_root": project_root,
        "stagetune.user_cache": user_cache,
        "stagetune.debug_prefix": _debug_prefix,
        "stagetune.command_list": commands_help,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
