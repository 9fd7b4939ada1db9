"""Side-by-side measurement: A and B alternate, several repeats, the median ratio and its spread.

On a shared machine absolute timings drift with the load; a ratio of two measurements taken
moments apart holds far better, and alternating the order cancels warm-up and drift bias.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytorch_lightning as pl


@dataclass
class Figure:
    """One row of the table: ``ratio = a / b`` per repeat, against a target bound (None: a reference)."""

    name: str
    a: str
    b: str
    ratios: list[float]
    target: float | None
    higher_is_better: bool
    note: str = ""
    indicative: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def met(self) -> bool | None:
        """Whether the median meets the target; None for a reference or an indicative (quick) figure."""
        if self.target is None or self.indicative:
            return None
        return self.median >= self.target if self.higher_is_better else self.median <= self.target

    def row(self) -> dict:
        bound = ">=" if self.higher_is_better else "<="
        target = "reference" if self.target is None else f"{bound} {self.target:g}"
        return {
            **asdict(self),
            "median": round(self.median, 3),
            "min": round(min(self.ratios), 3),
            "max": round(max(self.ratios), 3),
            "target_text": target,
            "met": self.met,
        }


def side_by_side(a: Callable[[], float], b: Callable[[], float], repeats: int) -> list[float]:
    """``a() / b()`` for each repeat, running A first on even repeats and B first on odd ones."""
    return against(a, [b], repeats)[0]


def against(a: Callable[[], float], others: list[Callable[[], float]], repeats: int) -> list[list[float]]:
    """``a() / b()`` per repeat for each B in ``others``, all timed in one rotation.

    One measurement of A serves every B of the same repeat (A is often the expensive side); the
    order ``A, B1, B2, ...`` is reversed on odd repeats, as in :func:`side_by_side`.
    """
    ratios: list[list[float]] = [[] for _ in others]
    sides = [a, *others]
    for r in range(repeats):
        order = range(len(sides)) if r % 2 == 0 else reversed(range(len(sides)))
        values = [0.0] * len(sides)
        for k in order:
            values[k] = sides[k]()
        for k in range(len(others)):
            ratios[k].append(values[0] / values[k + 1])
    return ratios


class StepClock(pl.Callback):
    """Timestamps of the end of each training batch: per-step time without start-up costs."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())


def per_step(stamps: list[float], warmup: int) -> float:
    """Seconds per step over the steps after the first ``warmup``."""
    timed = stamps[warmup - 1 :]
    return (timed[-1] - timed[0]) / (len(timed) - 1)


MET = {True: "yes", False: "no", None: "-"}


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table."""
    lines = [
        "| figure | A / B | median | spread (min-max) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        r = f.row()
        lines.append(f"| {f.name} | {f.a} / {f.b} | {r['median']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {r['target_text']} | {MET[f.met]} |")
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    if any(f.indicative for f in figures):
        notes.insert(0, "- indicative only (--quick: few steps and repeats); no target is judged met or not")
    return "\n".join(lines + ([""] + notes if notes else []))


def write(figures: list[Figure], out: Path, context: dict) -> None:
    """``results.json`` and ``results.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"context": context, "figures": [f.row() for f in figures]}, indent=2))
    header = "\n".join(f"- {k}: {v}" for k, v in context.items())
    (out / "results.md").write_text(f"# stagetune benchmarks\n\n{header}\n\n{table(figures)}\n")
