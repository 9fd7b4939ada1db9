"""One row per epoch (stage, training loss, validation metrics, time): the run's history.

fastai ends every ``fit`` with such a table and users read a run by it. The rows are built once,
here, and shown three ways: above the progress bar as each epoch ends, as one line per epoch when
the output is a log file, and as ``history.csv`` in the run directory. The rows are checkpointed,
so a resumed run's table and file hold every epoch once.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from stagetune.engine.plan import StagePlan

TRAIN_LOSS = "train/loss"
FIXED = ("epoch", "stage")


class History(pl.Callback):
    """Collects a row at each training epoch's end; rank 0 rewrites ``csv_path`` (if given) from them."""

    def __init__(self, csv_path: str | Path | None = None) -> None:
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.rows: list[dict[str, Any]] = []
        self._started = time.monotonic()
        self._validated = False

    @classmethod
    def of(cls, trainer: pl.Trainer) -> "History | None":
        """The Trainer's History, if it has one."""
        return next((c for c in trainer.callbacks if isinstance(c, cls)), None)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()
        self._validated = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        row = self.row(trainer, time.monotonic() - self._started)
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if self.csv_path is not None and trainer.is_global_zero:
            write_csv(self.rows, self.csv_path)

    def row(self, trainer: pl.Trainer, seconds: float) -> dict[str, Any]:
        """The epoch that just ended: 1-based epoch, stage, training loss, this epoch's validation metrics, seconds."""
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1, "stage": StagePlan.of(trainer).active.name}
        if TRAIN_LOSS in metrics:
            row[TRAIN_LOSS] = float(metrics[TRAIN_LOSS])
        if self._validated:
            row.update({k: float(v) for k, v in sorted(metrics.items()) if k.startswith("val/")})
        row["time_s"] = round(seconds, 2)
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Epoch and stage, the training loss, the validation metrics (``val/loss`` first), time."""
    seen = {k for r in rows for k in r} - {*FIXED, TRAIN_LOSS, "time_s"}
    metrics = sorted(seen, key=lambda k: (k != "val/loss", k))
    return [*FIXED, *([TRAIN_LOSS] if any(TRAIN_LOSS in r for r in rows) else []), *metrics, "time_s"]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``history.csv``, replaced whole (through a temporary file) so a reader never sees half a row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)


def format_cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if key == "time_s":
        if float(value) < 60:
            return f"{float(value):.1f}s"
        minutes, seconds = divmod(int(round(float(value))), 60)
        return f"{minutes}:{seconds:02d}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


class Table:
    """A fixed-width text table printed a row at a time; the header comes with the first row."""

    def __init__(self, keys: list[str], stages: list[str] = ()) -> None:
        self.keys = keys
        stage_width = max([len("stage"), *map(len, stages)])
        self.widths = [stage_width if k == "stage" else len(k) if k == "epoch" else max(len(self.title(k)), 8) for k in keys]

    @staticmethod
    def title(key: str) -> str:
        return "time" if key == "time_s" else key

    def header(self) -> str:
        return "  ".join(self.title(k).ljust(w) for k, w in zip(self.keys, self.widths)).rstrip()

    def line(self, row: dict[str, Any]) -> str:
        cells = [format_cell(k, row.get(k)) for k in self.keys]
        self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells)]
        return "  ".join(c.ljust(w) for c, w in zip(cells, self.widths)).rstrip()


def format_table(rows: list[dict[str, Any]]) -> str:
    """The whole history as text, for the end of a run."""
    table = Table(columns(rows), [r["stage"] for r in rows])
    body = [table.line(r) for r in rows]
    return "\n".join([table.header(), *body])
