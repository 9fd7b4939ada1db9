"""The report of an Optuna study, read from the study itself: every worker's trials, not one sweep dir's.

Written by each worker when it ends, beside the sweep's own summary (``study.md``, ``study.csv``,
``study.png``), and again by ``stagetune-report SWEEP_DIR`` when the sweep directory names a study
(``optuna_study.yaml``, written by the Optuna sweeper): the best
trial, how many trials completed, were pruned or failed, each trial's parameters with its
validation and test values (as its run recorded them), the optimisation history and Optuna's
parameter importances. An in-memory study can be reported only by the process that ran it; a
study in a journal file or a database, by anyone, at any time.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
import yaml
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from stagetune.atomic import write_atomic
from stagetune.figures import new_figure
from stagetune.runs.sweep_report import fmt as _fmt
from stagetune.runs.sweep_report import rows_csv, rows_markdown
from stagetune.sweeps.study import SURPLUS, open_storage

log = logging.getLogger("stagetune")

STUDY_FILE = "optuna_study.yaml"  # the study a sweep directory belongs to: name and storage
STUDY_MD = "study.md"
STUDY_CSV = "study.csv"
STUDY_PNG = "study.png"
STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed", TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def load_study(sweep_dir: Path) -> optuna.Study | None:
    """The study a sweep directory names, or None (no Optuna sweep, or a study gone with its memory)."""
    path = Path(sweep_dir) / STUDY_FILE
    if not path.exists():
        return None
    named = yaml.safe_load(path.read_text()) or {}
    try:
        return optuna.load_study(study_name=named["study_name"], storage=open_storage(named.get("storage")))
    except KeyError:
        log.warning("study %s was kept in memory by the process that ran it: no study report", named.get("study_name"))
        return None


class StudyReport:
    """What can be said about one study."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        trials = study.get_trials(deepcopy=False)
        self.surplus = [t for t in trials if t.user_attrs.get(SURPLUS)]
        self.trials = [t for t in trials if not t.user_attrs.get(SURPLUS)]
        self.maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        self.params = sorted({p for t in self.trials for p in t.params})
        self.test_keys = sorted({k for t in self.trials for k in (t.user_attrs.get("test") or {})})

    def counts(self) -> dict[str, int]:
        out = {name: 0 for name in STATES.values()}
        for t in self.trials:
            out[STATES[t.state]] += 1
        return out

    def best(self) -> FrozenTrial | None:
        done = [t for t in self.trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
        if not done:
            return None
        return (max if self.maximize else min)(done, key=lambda t: t.value)

    def importances(self) -> dict[str, float] | None:
        """Optuna's parameter importances (its default evaluator) over the completed trials; None if too few."""
        if len(self.params) < 1 or self.counts()["complete"] < 2:
            return None
        try:
            return optuna.importance.get_param_importances(self.study)
        except (ValueError, RuntimeError) as err:
            log.warning("no parameter importances for study %s: %s", self.study.study_name, err)
            return None

    def rows(self) -> list[dict[str, str]]:
        rows = []
        for t in self.trials:
            attrs = t.user_attrs
            valid = attrs.get("valid") or {}
            row = {"trial": str(t.number), "state": STATES[t.state]}
            row.update({p: _fmt(t.params.get(p)) for p in self.params})
            row["value"] = _fmt(t.value)
            row["valid"] = _fmt(next(iter(valid.values()), None))
            if t.state == TrialState.PRUNED and t.intermediate_values:
                step = max(t.intermediate_values)
                row["value"] = _fmt(t.intermediate_values[step])
            row["epochs"] = _fmt(attrs.get("epochs", len(t.intermediate_values) or None))
            row.update({k: _fmt((attrs.get("test") or {}).get(k)) for k in self.test_keys})
            row["run_dir"] = attrs.get("run_dir") or ""
            rows.append(row)
        return rows

    def csv(self) -> str:
        return rows_csv(self.rows(), ["trial", "state"])

    def markdown(self) -> str:
        direction = "maximize" if self.maximize else "minimize"
        counts = self.counts()
        lines = [f"# Optuna study {self.study.study_name} ({direction})", ""]
        lines.append(", ".join(f"{n} {state}" for state, n in counts.items() if n or state in ("complete", "pruned", "failed")))
        if self.surplus:
            lines.append(f"({len(self.surplus)} surplus asks by workers that found the study full, not run)")
        best = self.best()
        if best is not None:
            chosen = " ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
            lines.append(f"best trial {best.number}: {best.value:.6g} ({chosen})")
        importances = self.importances()
        if importances:
            lines.append("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
        lines.append("")
        rows = self.rows()
        lines.extend(rows_markdown(rows))
        lines.append("")
        lines.append(
            "value: the study's objective (a pruned trial's is its last reported epoch); valid: the run's best "
            "validation value; test: measured once on the best checkpoint, never used to choose."
        )
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        """The optimisation history (best so far as a step line, pruned trials as crosses) and the importances."""
        importances = self.importances()
        fig = new_figure(10 if importances else 6, 3.6)
        axes = fig.subplots(1, 2 if importances else 1, squeeze=False)
        ax = axes[0][0]
        done = [t for t in self.trials if t.state == TrialState.COMPLETE and t.value is not None]
        pruned = [t for t in self.trials if t.state == TrialState.PRUNED and t.intermediate_values]
        ax.plot([t.number for t in done], [t.value for t in done], "o", label="complete")
        if pruned:
            ax.plot(
                [t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned], "x", color="gray", label="pruned (last report)"
            )
        best, xs, ys = None, [], []
        for t in sorted(done, key=lambda t: t.number):
            if best is None or (t.value > best if self.maximize else t.value < best):
                best = t.value
            xs.append(t.number)
            ys.append(best)
        if xs:
            last = max(t.number for t in self.trials)
            ax.step([*xs, last], [*ys, ys[-1]], where="post", color="C1", label="best so far")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel("objective")
        ax.set_title(f"study {self.study.study_name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if importances:
            names = list(importances)[::-1]
            axes[0][1].barh(names, [importances[n] for n in names])
            axes[0][1].set_xlabel("importance (Optuna)")
        fig.tight_layout()
        fig.savefig(path, dpi=90, bbox_inches="tight")

    def write(self, sweep_dir: Path) -> list[Path]:
        md, table, png = (Path(sweep_dir) / n for n in (STUDY_MD, STUDY_CSV, STUDY_PNG))
        write_atomic(md, self.markdown())
        write_atomic(table, self.csv())
        self.plot(png)
        return [md, table, png]


def write_study_report(sweep_dir: Path) -> tuple[StudyReport, list[Path]] | None:
    """The study's report in the sweep directory, when the sweep was an Optuna study we can reach."""
    study = load_study(sweep_dir)
    if study is None:
        return None
    report = StudyReport(study)
    return report, report.write(sweep_dir)
