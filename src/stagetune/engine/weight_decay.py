"""What ``wd`` means, from the config to the optimizer: one convention, converted in one place.

``wd`` (``optim.wd``, a stage's ``wd``) means the same number whatever the optimizer:

* ``l2`` — the loss gains ``wd * sum(w^2)``, so the gradient gains ``2 * wd * w``. Torch's
  ``weight_decay`` adds ``weight_decay * w`` (the gradient of ``(weight_decay/2) * sum(w^2)``), so
  a torch optimizer gets ``weight_decay = 2 * wd``.
* ``decoupled`` — each step shrinks the weights, ``w *= 1 - lr * wd`` (torch's AdamW, fastai's
  default): torch's ``weight_decay`` is then the same number.

A stage's ``wd`` is null (take ``optim.wd``), one number for every layer group, or a mapping from
layer-group name to number; :func:`group_wds` and :func:`recorded_wd` are the only places that
resolve it. Param groups carry ``wd`` in this convention; :func:`torch_weight_decay` is the only
conversion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum


class WdKind(StrEnum):
    """How weight decay acts: a loss term (``l2``) or a shrink of the weights (``decoupled``)."""

    l2 = "l2"
    decoupled = "decoupled"


def torch_weight_decay(wd: float, kind: WdKind | str) -> float:
    """The ``weight_decay`` a torch optimizer needs to apply stagetune's ``wd`` of ``kind``."""
    return 2 * wd if WdKind(kind) is WdKind.l2 else wd


StageWd = float | Mapping[str, float] | None


def _number(wd: float | None, default: float) -> float:
    return float(default if wd is None else wd)


def group_wds(wd: StageWd, names: Sequence[str], default: float) -> dict[str, float]:
    """The ``wd`` of each layer group in ``names``: a stage's mapping by name, else its one number;
    ``default`` (``optim.wd``) where the stage sets none."""
    if isinstance(wd, Mapping):
        return {name: float(wd.get(name, default)) for name in names}
    return dict.fromkeys(names, _number(wd, default))


def recorded_wd(wd: StageWd, names: Sequence[str] | None, default: float) -> float | dict[str, float]:
    """A stage's ``wd`` as the run records show it: one number, or where it sets groups by name each
    group's of ``names`` (``None``: only the groups it names)."""
    if isinstance(wd, Mapping):
        return group_wds(wd, list(wd) if names is None else names, default)
    return _number(wd, default)
