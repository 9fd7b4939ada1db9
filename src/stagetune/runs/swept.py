"""What a sweep job changed: the swept keys and the job's label built from their values.

A sweep's runs differ only in the keys the sweep turns, so those name the job in TensorBoard
(``optim.wd=0.01,plan.lr=0.005`` instead of ``3/tensorboard``) and are the HParams columns worth
showing; everything else is the same in every job and is left out. A key is swept when the
sweeper's ``params`` name it (a sweep config, Optuna's search space) or when the command line
gives it a sweep (``optim.wd=0,0.1``, ``range(...)``, ``choice(...)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser

MAX_LABEL = 200  # one directory name: well under the 255 bytes file systems allow


def override_key(item: str) -> str:
    """``key`` of ``key=value``, ``+key=value`` or ``++key=value``."""
    return item.split("=", 1)[0].lstrip("+~")


def keys_swept_by(argv: Iterable[str], sweeper_params: Mapping | None) -> list[str]:
    """The keys a multirun sweeps: the sweeper's ``params`` first, then the command line's sweeps."""
    keys = [str(k) for k in (sweeper_params or {})]
    given = [a for a in argv if "=" in a and not a.startswith("-")]
    for override in OverridesParser.create().parse_overrides(given):
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override() and key not in keys:
            keys.append(key)
    return [k for k in keys if not k.startswith("hydra.")]


def job_label(keys: Iterable[str], overrides: Iterable[str]) -> str:
    """``key=value,...`` of the swept keys as this job set them (``/`` becomes ``_``); empty if none."""
    values = {override_key(item): item.split("=", 1)[1] for item in overrides if "=" in item}
    label = ",".join(f"{key}={values[key]}" for key in keys if key in values).replace("/", "_")
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 3] + "..."
