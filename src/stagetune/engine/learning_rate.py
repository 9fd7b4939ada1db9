"""The learning-rate grammar: what a stage's ``lr`` and ``plan.lr`` may say, and the rate each layer group trains at.

The one owner of the words (the plan, the range test, HParams, the plan preview, the ``${mul:...}``
resolver and docs/learning-rates.md all read them from here). A stage's ``lr`` spreads over the
layer groups that train in it, in order:

- a number ``r``: every group trains at ``r``;
- ``[hi]`` (fastai's ``slice(hi)``): ``hi/10`` for every group but the last, ``hi`` for the last;
- ``[lo, hi]`` (``slice(lo, hi)``): geometric, group k of n gets ``lo * (hi/lo) ** (k/(n-1))``;
- ``find``: the LR range test runs when the stage starts and every group trains at the rate it finds;
- ``find*K`` terms, which is what ``${mul:${plan.lr},K}`` makes of ``plan.lr=find``: the Ks are the
  stage's *shape*. The range test sweeps the shape's top (its other ends keep their ratio to it), and
  the rate it finds is the top's: ``[find*0.005, find*0.5]`` trains at ``slice(T/100, T)`` for the
  rate ``T`` found. A one-number ``find*K`` is therefore ``find``: K is only a ratio to other ends.

``plan.lr`` is a number > 0 or ``find``; ``${mul:a,K}`` multiplies a number, and turns ``find``
(or ``find*J``) into ``find*(J*K)``. Nothing here imports torch: configs are checked before it loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from stagetune.errors import ConfigError

LearningRate = float | Sequence[float]

FIND = "find"
LR_ALLOWED = "a learning rate is a number > 0, [hi] with hi > 0, or [lo, hi] with 0 < lo <= hi, or find"


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _find_factor(value: Any) -> float | None:
    """``find`` -> 1, ``find*K`` -> K; anything else None."""
    if value == FIND:
        return 1.0
    if isinstance(value, str) and value.startswith(FIND + "*"):
        try:
            return float(value[len(FIND) + 1 :])
        except ValueError:
            return None
    return None


def find_shape(lr: Any) -> LearningRate | None:
    """The shape of an ``lr`` made of ``find`` terms (``[find*0.01, find]`` -> ``(0.01, 1.0)``); None when it has none.

    A mix of ``find`` terms and numbers gives a tuple holding None, which :func:`check_lr` refuses.
    """
    values = list(lr) if _is_list(lr) else [lr]
    factors = [_find_factor(v) for v in values]
    if all(f is None for f in factors):
        return None
    return tuple(factors) if _is_list(lr) else factors[0]


def finds(lr: Any) -> bool:
    """Whether the range test sets this ``lr`` when its stage starts."""
    return find_shape(lr) is not None


def slice_lrs(lr: LearningRate, n: int) -> list[float]:
    """Spread a number or a slice over ``n`` trainable groups, as fastai does (see the module doc)."""
    if n < 1:
        raise ValueError(f"need at least one group, got {n}")
    if isinstance(lr, (int, float)):
        return [float(lr)] * n
    values = [float(v) for v in lr]
    if len(values) == 1:
        hi = values[0]
        return [hi / 10] * (n - 1) + [hi]
    if len(values) != 2:
        raise ValueError(f"a learning-rate slice has one or two ends, got {values}")
    lo, hi = values
    if n == 1:
        return [hi]
    return [lo * (hi / lo) ** (k / (n - 1)) for k in range(n)]


def scaled(shape: LearningRate, top: float) -> LearningRate:
    """``shape`` scaled so that its highest end is ``top``."""
    if isinstance(shape, (int, float)):
        return float(top)
    return tuple(float(v) * top / max(shape) for v in shape)


def resolved(lr: Any, found: float | None) -> LearningRate:
    """The number or slice a stage trains at: ``lr`` itself, or a ``find`` shape with its top set to ``found``."""
    shape = find_shape(lr)
    if shape is None:
        return lr
    if found is None:
        raise ValueError(f"lr={lr!r} needs the rate its range test found")
    return scaled(shape, found)


def group_rates(lr: Any, n: int, found: float | None = None) -> list[float]:
    """The peak rate of each of ``n`` trainable groups for a stage's ``lr`` (a ``find`` one: given the rate ``found``)."""
    return slice_lrs(resolved(lr, found), n)


def shares(lr: Any, n: int) -> list[float]:
    """Each of ``n`` trainable groups' rate as a share of the top's: what the range test keeps while it sweeps the top."""
    shape = find_shape(lr)
    rates = slice_lrs(lr if shape is None else shape, n)
    return [r / max(rates) for r in rates]


def check_lr(key: str, lr: Any) -> None:
    """A stage's ``lr``: a number > 0, ``[hi]`` or ``[lo, hi]`` with ``0 < lo <= hi``, or made of ``find`` terms alone."""
    shape = find_shape(lr)
    if shape is not None:
        if any(v is None for v in (shape if isinstance(shape, tuple) else [shape])):
            raise ConfigError(key, lr, "find cannot be mixed with numbers; " + LR_ALLOWED)
        lr = shape
    values = list(lr) if _is_list(lr) else [lr]
    lr = values if _is_list(lr) else lr  # shown as the config wrote it
    if not 1 <= len(values) <= 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(key, lr, LR_ALLOWED)
    if not all(math.isfinite(float(v)) and float(v) > 0 for v in values):
        raise ConfigError(key, lr, "every end must be finite and > 0; " + LR_ALLOWED)
    if len(values) == 2 and float(values[0]) > float(values[1]):
        raise ConfigError(key, lr, "the low end is above the high end; " + LR_ALLOWED)


def base_lr(value: Any) -> Any:
    """``plan.lr`` as the code reads it: ``find``, else the float it was typed as (a value that is neither is left for :func:`check_plan_lr`)."""
    if value == FIND or isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def check_base_lr(value: Any, key: str = "plan.lr") -> None:
    """``plan.lr`` as written, before the stages' ``${mul:${plan.lr},K}`` read it: a number or ``find``."""
    if value == FIND:
        return
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(value)
        float(value)
    except ValueError:
        raise ConfigError(key, value, "a number > 0, or find (a slice belongs to a stage: plan.stages.NAME.lr=[lo,hi])") from None


def check_plan_lr(value: Any, key: str = "plan.lr") -> None:
    """``plan.lr`` as read (:func:`base_lr`): ``find``, or a finite number > 0."""
    if value == FIND:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(key, value, "a number > 0, or find")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(key, value, "must be > 0")


def mul(a: Any, b: Any) -> float | str:
    """The ``${mul:a,b}`` resolver: ``a * b``; with ``a`` made of ``find`` (``plan.lr=find``), ``find*(K*b)``."""
    factor = _find_factor(a)
    if factor is not None:
        return f"find*{factor * float(b)!r}"
    return float(a) * float(b)
