"""One failing job does not stop a sweep: the others complete and the report marks the failure."""

from __future__ import annotations

import csv
import json

from tests.helpers.sweeps import TINY, run_module


def test_a_job_with_a_bad_value_fails_alone_and_is_reported(tmp_path):
    out = tmp_path / "sweep"
    done = run_module("stagetune", "-m", *TINY, "optim.wd=-1,0.1", "plan.lr=0.01", f"hydra.sweep.dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    failed = json.loads((out / "0" / "metrics.json").read_text())
    assert failed["status"] == "failed" and failed["error"].startswith("optim.wd=-1")
    completed = json.loads((out / "1" / "metrics.json").read_text())
    assert completed["status"] == "completed" and completed["metric"]["best"] > 0

    rows = {row["job"]: row for row in csv.DictReader((out / "summary.csv").open())}
    assert rows["0"]["status"] == "failed" and "optim.wd=-1" in rows["0"]["error"]
    assert rows["1"]["status"] == "completed"
    summary = (out / "summary.md").read_text()
    assert "2 jobs, 1 completed, not completed: 0" in summary
    assert "in job 1 " in summary
