"""A sweep's recipes with their seeds averaged: what an ensemble of each recipe's runs gains on valid.

For every recipe (jobs differing only in ``seed``, ``data.seed`` or ``data.split_seed``, as the sweep report groups
them) with at least two completed jobs, the jobs' best checkpoints are averaged as
``stagetune-eval RUN1 RUN2 ...`` averages them (``runs/ensemble.py``) and scored on valid, beside
the jobs alone (mean ± sample sd over the seeds, on the same examples). Valid only: it is a choice
between recipes, and test chooses nothing. Jobs that differ in ``data.seed`` or ``data.split_seed`` hold other splits
and are refused in one line, as any ensemble of other data is.
"""

from __future__ import annotations

from pathlib import Path

from stagetune.atomic import write_atomic
from stagetune.errors import StagetuneError
from stagetune.runs.ensemble import evaluate_ensemble
from stagetune.runs.sweep_report import Report, Stat, fmt, rows_markdown
from stagetune.runs.trained import load_trained

ENSEMBLES_MD = "ensembles.md"


def ensemble_rows(report: Report, device: str = "cpu") -> list[dict[str, str]]:
    """One row per recipe with two or more completed seeds: its values, the ensemble's metric, the seeds' alone."""
    rows = []
    for group in report.groups:
        done = group.completed()
        if len(done) < 2:
            continue
        members = [load_trained(report.sweep_dir / job.name, "best", device) for job in done]
        result = evaluate_ensemble(members, "valid")
        if report.metric not in result.metrics:
            raise StagetuneError(f"--ensemble: the sweep's metric {report.metric} is not one an ensemble gives ({', '.join(result.metrics)})")
        alone = Stat.of([m[report.metric] for m in result.members])
        rows.append(
            {
                **group.values,
                "seeds": str(len(done)),
                f"{report.metric} ensemble": fmt(result.metrics[report.metric]),
                f"{report.metric} alone": alone.text(),
            }
        )
    if not rows:
        raise StagetuneError(f"--ensemble: no recipe in {report.sweep_dir} has two completed seeds (sweep seed=0,1,2 to make some)")
    return rows


def write_ensembles(report: Report, device: str = "cpu") -> tuple[str, Path]:
    """``ensembles.md`` in the sweep directory (rewritten, like the summary); its text and path."""
    lines = [
        f"# Seeds averaged, {report.sweep_dir}",
        "",
        "Per recipe: its completed seeds' best checkpoints averaged (an ensemble) on valid, beside the seeds alone (mean ± sample sd).",
        "",
        *rows_markdown(ensemble_rows(report, device)),
    ]
    text = "\n".join(lines) + "\n"
    path = report.sweep_dir / ENSEMBLES_MD
    write_atomic(path, text)
    return text, path
