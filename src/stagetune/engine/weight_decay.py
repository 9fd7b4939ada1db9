"""What ``wd`` means, from the config to the optimizer: one convention, converted in one place.

``wd`` (``optim.wd``, a stage's ``wd``) means the same number whatever the optimizer:

* ``l2`` — the loss gains ``wd * sum(w^2)``, so the gradient gains ``2 * wd * w``. Torch's
  ``weight_decay`` adds ``weight_decay * w`` (the gradient of ``(weight_decay/2) * sum(w^2)``), so
  a torch optimizer gets ``weight_decay = 2 * wd``.
* ``decoupled`` — each step shrinks the weights, ``w *= 1 - lr * wd`` (torch's AdamW, fastai's
  default): torch's ``weight_decay`` is then the same number.

Param groups carry ``wd`` in this convention; :func:`torch_weight_decay` is the only conversion.
"""

from __future__ import annotations

from enum import StrEnum


class WdKind(StrEnum):
    """How weight decay acts: a loss term (``l2``) or a shrink of the weights (``decoupled``)."""

    l2 = "l2"
    decoupled = "decoupled"


def torch_weight_decay(wd: float, kind: WdKind | str) -> float:
    """The ``weight_decay`` a torch optimizer needs to apply stagetune's ``wd`` of ``kind``."""
    return 2 * wd if WdKind(kind) is WdKind.l2 else wd
