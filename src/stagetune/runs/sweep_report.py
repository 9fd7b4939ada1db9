"""Sweep report: one row per job (overrides, final metrics, time, status), a table and a plot.

A sweep directory holds one run directory per job (``0/``, ``1/``, ...). The report reads each
through :class:`~stagetune.runs.rundir.RunDir`, finds the swept keys (the command-line keys whose value
differs between jobs) and writes ``summary.csv``, ``summary.md`` and ``summary.png`` into the sweep
directory: a heatmap of the metric over weight decay x learning rate when both were swept, else the
metric against each swept key (with the training part's RMSE in eval mode beside valid's, when the
runs recorded it: the gap between the two curves is the overfitting). Jobs that differ only in a seed
(``seed``, ``data.seed``, ``data.split_seed``) are one recipe: the table ``groups.csv``/``summary.md`` and the plots give
each recipe's mean and sample standard deviation over its seeds, so recipes are compared with their
spread. It runs by itself at the end of every multirun (the Hydra callback
:class:`SweepReport`, configured in ``conf/hydra/default.yaml``) and again on demand with
``stagetune-report SWEEP_DIR``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from stagetune.atomic import write_atomic
from stagetune.figures import colormap, new_figure, text_color
from stagetune.runs.rundir import CONFIG, METRICS, RunDir

log = logging.getLogger("stagetune")

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"
GROUPS_CSV = "groups.csv"
# Keys whose values are draws of noise, not recipes: jobs differing only in these are grouped.
SEED_KEYS = ("seed", "data.seed", "data.split_seed")
# Config nodes a sweeper adds to every job for its own use (the Optuna trial handle): not swept values.
TRIAL_CALLBACK = "callbacks.optuna_trial"


@dataclass
class Job:
    """One job of a sweep as its run directory recorded it."""

    name: str
    overrides: dict[str, str]
    status: str
    metric: str | None = None
    mode: str | None = None
    best: float | None = None
    last: float | None = None
    test: dict[str, float] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    time_s: float | None = None
    error: str | None = None

    @classmethod
    def read(cls, path: Path) -> "Job":
        run = RunDir(path)
        metrics = run.metrics()
        overrides_file = run.path / "overrides.yaml"
        items = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        overrides = dict(item.split("=", 1) for item in items or [] if "=" in item)
        metric = metrics.get("metric", {})
        return cls(
            name=run.path.name,
            overrides=overrides,
            status=job_status(metrics),
            metric=metric.get("name"),
            mode=metric.get("mode"),
            best=metric.get("best"),
            last=metric.get("last"),
            test=metrics.get("test", {}),
            train=metrics.get("train_eval", {}),
            time_s=metrics.get("time_s"),
            error=metrics.get("error"),
        )


def job_status(metrics: dict) -> str:
    """A job's status; a ``debug=NAME`` run is never "completed", so it is never a result."""
    status = metrics.get("status", "missing")
    return f"{status}, debug={metrics['debug']}" if metrics.get("debug") else status


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The run directories of a sweep, in job order."""
    dirs = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and ((p / METRICS).exists() or (p / CONFIG).exists())]
    return sorted(dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def differing_keys(jobs: list[Job]) -> list[str]:
    """Keys whose value differs between jobs, in command-line order; every key for a single job."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys and not k.lstrip("+").startswith(TRIAL_CALLBACK)]
    if len(jobs) == 1:
        return [k for k in keys if k not in ("experiment", "sweep")]
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _numbers(text: str) -> tuple[float, ...] | None:
    """The numbers of a number or a list of numbers (an LR slice ``[1e-05,0.001]``); None for other text."""
    parts = text.strip().removeprefix("[").removesuffix("]").split(",") if text.strip().startswith("[") else [text]
    values = [_number(part.strip()) for part in parts]
    return tuple(values) if values and None not in values else None


def _sort_key(value: str) -> tuple:
    """Numbers and slices in numeric order (``[1e-05,0.001]`` before ``[0.0001,0.01]``), then other text."""
    numbers = _numbers(value)
    return (0, numbers, "") if numbers is not None else (1, (), value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def fmt(value: Any) -> str:
    """A table cell: empty for None, four significant digits for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def rows_csv(rows: list[dict], empty_header: list[str]) -> str:
    """A table of rows (dicts with the same keys) as CSV text; ``empty_header`` when there are none."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else empty_header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def rows_markdown(rows: list[dict]) -> list[str]:
    """A table of rows (dicts with the same keys, string cells) as Markdown lines; none when empty."""
    if not rows:
        return []
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row[h].replace("|", "\\|") for h in header) + " |" for row in rows]


@dataclass(frozen=True)
class Stat:
    """A number over the seeds of one recipe: mean, sample standard deviation (None for one seed), count."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Stat | None":
        values = [float(v) for v in values if _finite(v)]
        if not values:
            return None
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return cls(mean, std, n)

    def text(self) -> str:
        return fmt(self.mean) if self.std is None else f"{self.mean:.4g} ± {self.std:.2g}"


@dataclass
class Group:
    """The jobs of one recipe: the same values of every swept key but the seeds."""

    values: dict[str, str]
    jobs: list[Job]

    def completed(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "completed" and _finite(j.best)]

    def stat(self, read) -> "Stat | None":
        """``read(job)`` over the completed jobs; None where no job has a finite value."""
        return Stat.of([v for v in (read(j) for j in self.completed()) if v is not None])


def counterpart(metric: str, prefix: str) -> str:
    """The same measure on another part: ``val/rmse`` -> ``train_eval/rmse``, ``test/rmse``."""
    return f"{prefix}/{metric.split('/', 1)[-1]}"


class Report:
    """The jobs of one sweep and what can be said about them."""

    def __init__(self, sweep_dir: str | Path) -> None:
        self.sweep_dir = Path(sweep_dir).resolve()
        if not self.sweep_dir.is_dir():
            raise FileNotFoundError(f"no sweep directory {self.sweep_dir}")
        self.jobs = [Job.read(p) for p in job_dirs(self.sweep_dir)]
        self.keys = differing_keys(self.jobs)
        self.recipe_keys = [k for k in self.keys if k not in SEED_KEYS]
        self.metric = next((j.metric for j in self.jobs if j.metric), "metric")
        self.mode = next((j.mode for j in self.jobs if j.mode), "min")
        self.test_keys = sorted({k for j in self.jobs for k in j.test})
        self.train_metric = counterpart(self.metric, "train_eval")
        self.test_metric = counterpart(self.metric, "test")
        self.has_train = any(self.train_metric in j.train for j in self.jobs)
        self.groups = self._groups()

    def _groups(self) -> list[Group]:
        groups: dict[tuple, Group] = {}
        for job in self.jobs:
            values = {k: job.overrides.get(k, "") for k in self.recipe_keys}
            groups.setdefault(tuple(values.values()), Group(values, [])).jobs.append(job)
        return list(groups.values())

    def seeded(self) -> bool:
        """Whether some recipe ran with more than one seed (then the report gives means and spreads)."""
        return any(len(g.jobs) > 1 for g in self.groups) and len(self.keys) > len(self.recipe_keys)

    def best_job(self) -> Job | None:
        done = [j for j in self.jobs if j.status == "completed" and _finite(j.best)]
        if not done:
            return None
        pick = min if self.mode == "min" else max
        return pick(done, key=lambda j: j.best)

    def best_group(self) -> Group | None:
        """The recipe with the best mean of the metric over its seeds."""
        scored = [(g, g.stat(lambda j: j.best)) for g in self.groups]
        scored = [(g, st) for g, st in scored if st is not None]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda gs: gs[1].mean)[0]

    def rows(self) -> list[dict[str, str]]:
        rows = []
        for job in self.jobs:
            row = {"job": job.name, "status": job.status}
            row.update({key: job.overrides.get(key, "") for key in self.keys})
            row[f"{self.metric} best"] = fmt(job.best)
            row[f"{self.metric} last"] = fmt(job.last)
            if self.has_train:
                row[self.train_metric] = fmt(job.train.get(self.train_metric))
            row.update({key: fmt(job.test.get(key)) for key in self.test_keys})
            row["time_s"] = fmt(job.time_s)
            row["error"] = job.error or ""
            rows.append(row)
        return rows

    def group_stats(self, group: Group) -> dict[str, "Stat | None"]:
        """Per recipe: the metric (the chosen checkpoint's), train and test counterparts, time."""
        stats = {self.metric: group.stat(lambda j: j.best)}
        if self.has_train:
            stats[self.train_metric] = group.stat(lambda j: j.train.get(self.train_metric))
        if self.test_metric in self.test_keys:
            stats[self.test_metric] = group.stat(lambda j: j.test.get(self.test_metric))
        return stats | {"time_s": group.stat(lambda j: j.time_s)}

    def group_rows(self, text: bool = False) -> list[dict[str, str]]:
        """One row per recipe: its values, seeds completed, and each number's mean and std (or
        ``mean ± std`` cells with ``text``)."""
        rows = []
        for group in self.groups:
            row = dict(group.values)
            row["seeds"] = f"{len(group.completed())}/{len(group.jobs)}"
            for name, st in self.group_stats(group).items():
                if text:
                    row[name] = st.text() if st else ""
                else:
                    row[f"{name} mean"] = fmt(st.mean) if st else ""
                    row[f"{name} std"] = fmt(st.std) if st else ""
            rows.append(row)
        return rows

    def csv(self) -> str:
        return rows_csv(self.rows(), ["job", "status"])

    def markdown(self) -> str:
        rows = self.rows()
        lines = [f"# Sweep {self.sweep_dir}", ""]
        failed = [j.name for j in self.jobs if j.status != "completed"]
        lines.append(f"{len(self.jobs)} jobs, {len(self.jobs) - len(failed)} completed" + (f", not completed: {', '.join(failed)}" if failed else ""))
        if self.seeded():
            best = self.best_group()
            if best is not None:
                st = self.group_stats(best)[self.metric]
                chosen = " ".join(f"{k}={v}" for k, v in best.values.items())
                lines.append(f"best mean {self.metric} ({self.mode}) over {st.n} seeds: {st.text()} ({chosen})")
            lines += ["", f"Per recipe, mean ± sample standard deviation over its seeds ({', '.join(k for k in self.keys if k in SEED_KEYS)}):", ""]
            lines.extend(rows_markdown(self.group_rows(text=True)))
            lines += ["", "Per job:"]
        else:
            best = self.best_job()
            if best is not None:
                chosen = " ".join(f"{k}={best.overrides.get(k, '')}" for k in self.keys)
                lines.append(f"best {self.metric} ({self.mode}): {best.best:.4g} in job {best.name} ({chosen})")
        lines.append("")
        lines.extend(rows_markdown(rows))
        return "\n".join(lines) + "\n"

    def grid_axes(self) -> tuple[str, str] | None:
        """(weight-decay key, learning-rate key) when exactly those two are swept (besides seeds) on a full grid (not Optuna's samples)."""
        wd = [k for k in self.recipe_keys if k.split(".")[-1] == "wd"]
        lr = [k for k in self.recipe_keys if k.split(".")[-1] == "lr"]
        if len(self.recipe_keys) != 2 or len(wd) != 1 or len(lr) != 1:
            return None
        cells = {(g.values[wd[0]], g.values[lr[0]]) for g in self.groups}
        rows, cols = {c[0] for c in cells}, {c[1] for c in cells}
        if len(rows) * len(cols) != len(cells):
            return None
        return wd[0], lr[0]

    def curves(self, key: str) -> dict[str, list[tuple[str, Stat]]]:
        """The figure's data against ``key``: per curve (``valid``, ``train`` when recorded), the
        recipes' (value of ``key``, mean and std over seeds), in ``key``'s order."""
        reads = {"valid": lambda j: j.best, "train": lambda j: j.train.get(self.train_metric)}
        out: dict[str, list[tuple[str, Stat]]] = {}
        for name, read in reads.items():
            points = []
            for group in self.groups:
                value = group.jobs[0].name if key == "job" else group.values.get(key)
                st = group.stat(read)
                if st is not None and value is not None:
                    points.append((value, st))
            if points:
                out[name] = sorted(points, key=lambda p: _sort_key(p[0]))
        return out

    def plot(self, path: Path) -> None:
        """A heatmap over wd x lr when both are swept on a grid, else the metric against each key."""
        axes = self.grid_axes()
        fig = self._heatmap(*axes) if axes else self._lines()
        fig.savefig(path, dpi=90, bbox_inches="tight")

    def _heatmap(self, wd_key: str, lr_key: str):
        wds = sorted({g.values[wd_key] for g in self.groups}, key=_sort_key)
        lrs = sorted({g.values[lr_key] for g in self.groups}, key=_sort_key)
        values = [[math.nan] * len(lrs) for _ in wds]
        cells = [[""] * len(lrs) for _ in wds]
        for group in self.groups:
            r, c = wds.index(group.values[wd_key]), lrs.index(group.values[lr_key])
            st = group.stat(lambda j: j.best)
            values[r][c] = st.mean if st else math.nan
            cells[r][c] = (
                (f"{st.mean:.4f}" + (f"\n± {st.std:.4f}" if st.std is not None else "")) if st else ", ".join(sorted({j.status for j in group.jobs})) or "none"
            )
        fig = new_figure(1.6 + 1.4 * len(lrs), 1.2 + 0.8 * len(wds))
        ax = fig.subplots()
        cmap = colormap("viridis_r" if self.mode == "min" else "viridis", bad="lightgray")
        image = ax.imshow(values, cmap=cmap, aspect="auto")
        best = self.best_group()
        for r in range(len(wds)):
            for c in range(len(lrs)):
                is_best = best is not None and (wds[r], lrs[c]) == (best.values[wd_key], best.values[lr_key])
                color = text_color(image.cmap(image.norm(values[r][c])) if math.isfinite(values[r][c]) else (0.83, 0.83, 0.83))
                ax.text(
                    c, r, cells[r][c] + (" *" if is_best else ""), ha="center", va="center", fontsize=9, color=color, fontweight="bold" if is_best else "normal"
                )
        ax.set_xticks(range(len(lrs)), lrs)
        ax.set_yticks(range(len(wds)), wds)
        ax.set_xlabel(lr_key)
        ax.set_ylabel(wd_key)
        spread = " over seeds, mean ± std" if self.seeded() else ""
        ax.set_title(f"best {self.metric} ({self.mode}{spread}; * best)")
        fig.colorbar(image, ax=ax, label=self.metric)
        return fig

    def _lines(self):
        keys = self.recipe_keys or ["job"]
        fig = new_figure(4.4 * len(keys), 3.4)
        axes = fig.subplots(1, len(keys), squeeze=False)
        labels = {"valid": f"valid {self.metric} (chosen checkpoint)", "train": f"train {self.train_metric.split('/', 1)[-1]} (eval mode, chosen checkpoint)"}
        for ax, key in zip(axes[0], keys):
            for name, points in self.curves(key).items():
                numeric = all(_number(v) is not None for v, _ in points)
                xs = [float(v) for v, _ in points] if numeric else [v for v, _ in points]
                if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
                    ax.set_xscale("log")
                means = [st.mean for _, st in points]
                stds = [st.std or 0.0 for _, st in points]
                ax.errorbar(xs, means, yerr=stds if any(stds) else None, fmt="o-", capsize=3, label=labels[name])
            ax.set_xlabel(key)
            ax.set_ylabel(self.metric.split("/", 1)[-1])
            ax.grid(alpha=0.3)
            if len(self.curves(key)) > 1:
                ax.legend(fontsize=8)
        seeds = ", mean ± std over seeds" if self.seeded() else ""
        fig.suptitle(f"{self.metric} ({self.mode}) over {len(self.jobs)} jobs{seeds}")
        fig.tight_layout()
        return fig

    def write(self) -> list[Path]:
        """Write the summary files into the sweep directory (``groups.csv`` too when seeds were swept); returns their paths."""
        csv_path, md_path, png_path = (self.sweep_dir / n for n in (SUMMARY_CSV, SUMMARY_MD, SUMMARY_PNG))
        write_atomic(csv_path, self.csv())
        write_atomic(md_path, self.markdown())
        self.plot(png_path)
        paths = [csv_path, md_path, png_path]
        if self.seeded():
            groups_path = self.sweep_dir / GROUPS_CSV
            write_atomic(groups_path, rows_csv(self.group_rows(), self.recipe_keys))
            paths.append(groups_path)
        return paths


class SweepReport(Callback):
    """Hydra callback: the sweep's report, written when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir() or not job_dirs(sweep_dir):
            log.warning("no run directories under %s: no sweep report", sweep_dir)
            return
        report = Report(sweep_dir)
        paths = report.write()
        print(report.markdown(), file=sys.stderr)
        print("sweep report: " + ", ".join(str(p) for p in paths), file=sys.stderr)
        print(f"tensorboard:  tensorboard --logdir {report.sweep_dir}", file=sys.stderr)
