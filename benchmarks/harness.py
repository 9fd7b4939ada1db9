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
    """One row of the table: ``ratio = a / b`` per repeat, against a target bound."""

    name: str
    a: str
    b: str
    ratios: list[float]
    target: float
    higher_is_better: bool
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def met(self) -> bool:
        return self.median >= self.target if self.higher_is_better else self.median <= self.target

    def row(self) -> dict:
        bound = ">=" if self.higher_is_better else "<="
        return {
            **asdict(self),
            "median": round(self.median, 3),
            "min": round(min(self.ratios), 3),
            "max": round(max(self.ratios), 3),
            "target_text": f"{bound} {self.target:g}",
            "met": self.met,
        }


def side_by_side(a: Callable[[], float], b: Callable[[], float], repeats: int) -> list[float]:
    """``a() / b()`` for each repeat, running A first on even repeats and B first on odd ones."""
    ratios = []
    for r in range(repeats):
        if r % 2 == 0:
            va, vb = a(), b()
        else:
            vb, va = b(), a()
        ratios.append(va / vb)
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


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table."""
    lines = [
        "| figure | A / B | median | spread (min-max) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        r = f.row()
        lines.append(
            f"| {f.name} | {f.a} / {f.b} | {r['median']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {r['target_text']} | {'yes' if f.met else 'no'} |"
        )
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def write(figures: list[Figure], out: Path, context: dict) -> None:
    """``results.json`` and ``results.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"context": context, "figures": [f.row() for f in figures]}, indent=2))
    header = "\n".join(f"- {k}: {v}" for k, v in context.items())
    (out / "results.md").write_text(f"# stagetune benchmarks\n\n{header}\n\n{table(figures)}\n")
