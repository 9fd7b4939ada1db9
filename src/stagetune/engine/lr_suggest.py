"""What an LR range test found: its curve, its settings, and the rates fastai's rules read from it.

The curve is the smoothed training loss against the learning rate (exponentially growing). The
suggestions are fastai's (``fastai.callback.schedule``), read from the curve after its first tenth
(the moving average still settling) and before the loss stops being finite:

- ``valley`` (the default, as in fastai): the longest stretch over which the loss keeps falling,
  halfway along it (fastai's index: start + a third + a sixth of the stretch);
- ``slide``: from the high end down, the first rate where the slope no longer changes by more than
  ``0.005`` over 15 steps (fastai's interval slide rule);
- ``minimum``: a tenth of the rate at the lowest loss;
- ``steep``: the rate where the loss falls fastest per unit of log LR.

A curve whose lowest point is not 1% below the highest point before it (flat), or that leaves too
few points, gets no suggestion: the caller warns (``stagetune-lr-find``) or stops in one line (a run with ``lr=find``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from stagetune.errors import ConfigError

FLAT = 0.01  # the smoothed loss must fall below (1 - FLAT) times its first value for a suggestion
MIN_POINTS = 5


class Suggest(StrEnum):
    """Which of fastai's rules turns a range test's curve into a learning rate."""

    valley = "valley"
    slide = "slide"
    minimum = "minimum"
    steep = "steep"


@dataclass
class RangeTestSettings:
    """The LR range test: ``steps`` batches from ``start_lr`` to ``end_lr``; ``suggest`` reads the curve.

    The test stops early once the smoothed loss (an exponential moving average with ``beta``,
    bias-corrected) exceeds ``diverge`` times its minimum.
    """

    start_lr: float = 1e-7  # LR of the first step (of the stage's highest group; the others keep the slice's ratio)
    end_lr: float = 10.0  # LR of the last step; it grows exponentially in between
    steps: int = 100  # batches in the test (the loader repeats when shorter)
    beta: float = 0.98  # smoothing of the loss: exponential moving average, bias-corrected
    diverge: float = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
    suggest: Suggest = Suggest.valley  # the rule that picks the rate from the curve

    def __post_init__(self) -> None:
        self.suggest = Suggest(self.suggest)

    def check(self, key: str) -> None:
        if not (math.isfinite(self.start_lr) and self.start_lr > 0):
            raise ConfigError(f"{key}.start_lr", self.start_lr, "must be > 0")
        if not (math.isfinite(self.end_lr) and self.end_lr > self.start_lr):
            raise ConfigError(f"{key}.end_lr", self.end_lr, f"must be above {key}.start_lr={self.start_lr}")
        if self.steps < 5:
            raise ConfigError(f"{key}.steps", self.steps, "must be >= 5")
        if not 0 <= self.beta < 1:
            raise ConfigError(f"{key}.beta", self.beta, "must be in [0, 1)")
        if not self.diverge > 1:
            raise ConfigError(f"{key}.diverge", self.diverge, "must be > 1")

    def lr_at(self, step: int) -> float:
        return self.start_lr * (self.end_lr / self.start_lr) ** (step / (self.steps - 1))


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``valley``: halfway along the longest run of falling losses."""
    n = len(losses)
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    third = (end - start) / 3
    return lrs[start + int(third) + int(third / 2)]


def slide(lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15, thresh: float = 0.005) -> float:
    """fastai's ``slide``: walking down from the highest rate, where the slope stops changing."""
    n = len(losses)
    grad = [losses[1] - losses[0]] + [(losses[k + 1] - losses[k - 1]) / 2 for k in range(1, n - 1)] + [losses[-1] - losses[-2]]
    right, left = n - 1, n - 1 - min(lr_diff, n - 1)
    found = lrs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        found = lrs[left]
        right, left = right - 1, left - 1
    return found


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``minimum``: a tenth of the rate at the lowest loss."""
    return lrs[min(range(len(losses)), key=losses.__getitem__)] / 10


def steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's ``steep``: the rate where the loss falls fastest per unit of log LR."""
    slopes = [(losses[k + 1] - losses[k]) / (math.log(lrs[k + 1]) - math.log(lrs[k])) for k in range(len(losses) - 1)]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


SUGGESTIONS: dict[Suggest, Callable[[Sequence[float], Sequence[float]], float]] = {
    Suggest.valley: valley,
    Suggest.slide: slide,
    Suggest.minimum: minimum,
    Suggest.steep: steep,
}


@dataclass
class RangeTest:
    """The curve of one test (for one stage) and the rates it suggests."""

    stage: str
    groups: dict[str, float]  # trainable layer group -> its share of the swept rate
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    diverged: bool
    suggest: Suggest = Suggest.valley

    def window(self) -> tuple[list[float], list[float]]:
        """The rates and smoothed losses the suggestions read: after the first tenth, while finite."""
        end = 0
        while end < len(self.smoothed) and math.isfinite(self.smoothed[end]):
            end += 1
        start = min(max(end - 1, 0), len(self.lrs) // 10)
        return self.lrs[start:end], self.smoothed[start:end]

    def why_none(self) -> str | None:
        """Why the curve gives no suggestion (too short, or flat), else None."""
        lrs, losses = self.window()
        if len(losses) < MIN_POINTS:
            return f"the loss was finite for {len(losses)} usable steps only (need {MIN_POINTS}); lower the start_lr or raise the steps"
        lowest = min(range(len(losses)), key=losses.__getitem__)
        highest = max(losses[: lowest + 1])
        if losses[lowest] > highest - FLAT * abs(highest):
            return f"the loss curve is flat (it never fell by {FLAT:.0%} between lr {lrs[0]:.1e} and {lrs[-1]:.1e}); no rate stands out"
        return None

    def suggestion(self, rule: Suggest | str) -> float | None:
        """The rate ``rule`` reads from the curve; None when the curve is ill-posed or the rate falls outside the range."""
        if self.why_none() is not None:
            return None
        value = SUGGESTIONS[Suggest(rule)](*self.window())
        return value if math.isfinite(value) and self.lrs[0] <= value <= self.lrs[-1] else None

    def suggestions(self) -> dict[str, float | None]:
        return {rule.value: self.suggestion(rule) for rule in Suggest}

    def suggested_lr(self) -> float | None:
        """The rate of the chosen rule (``suggest``)."""
        return self.suggestion(self.suggest)

    def suggested_stage_lr(self) -> float | list[float] | None:
        """The value to give the stage's ``lr``: a number, or ``[lo, hi]`` with the plan's ratio."""
        hi = self.suggested_lr()
        if hi is None:
            return None
        lo = hi * min(self.groups.values())
        return hi if math.isclose(lo, hi) else [lo, hi]

    def as_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "suggest": self.suggest.value,
            "suggestions": self.suggestions(),
            "suggested_lr": self.suggested_lr(),
            "suggested_stage_lr": self.suggested_stage_lr(),
            "no_suggestion": self.why_none(),
        }
