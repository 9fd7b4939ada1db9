"""A run directory's records are append-only, and it has one writer at a time.

Through the command line, on the tiny network: a resume leaves config.yaml, overrides.yaml and
run.json as first written (plus one appended entry); resume takes no overrides; a completed run is
left untouched; a new run never starts in a directory that holds one, and of two started at once
into one directory exactly one runs.
"""

import datetime
import json
import signal
import time
from pathlib import Path

import torch

from tests.helpers.cli import ROOT, run_cli, start_cli

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny", "logger=none"]
FIRST_WRITTEN = ("config.yaml", "overrides.yaml", "run.json")


def files(run: Path) -> dict[str, bytes]:
    """Every file of the run directory, byte for byte."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def records(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in (*FIRST_WRITTEN, "metrics.json")}


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def wait_for(path: Path, proc, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_resume_appends_one_entry_and_rewrites_no_record(tmp_path):
    run = tmp_path / "run"
    kill = ["+callbacks.kill._target_=tests.tiny.KillAt", "+callbacks.kill.step=20", f"+callbacks.kill.marker={tmp_path}/killed"]
    killed = run_cli(*TINY, f"hydra.run.dir={run}", *kill, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    first = records(run)
    everything = files(run)

    refused = run_cli(f"resume={run}", "optim.wd=0.5", "plan.lr=1", cwd=tmp_path)
    assert refused.returncode == 2
    assert last_line(refused.stderr).startswith(f"stagetune: config error: resume='{run}': continues the run with its own config.yaml")
    assert "refused: optim.wd=0.5 plan.lr=1" in last_line(refused.stderr)
    assert files(run) == everything, "a refused resume writes nothing, and does not mark the run failed"

    from_step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    resumed = run_cli(f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("config.yaml", "overrides.yaml"):
        assert (run / name).read_bytes() == first[name], name
    original, now = first["run.json"].decode(), (run / "run.json").read_text()
    body = original[: original.rstrip().rindex("}")].rstrip()
    assert now.startswith(body + ',\n  "resumes": ['), "the original entries stay byte for byte"
    info = json.loads(now)
    (entry,) = info.pop("resumes")
    assert info == json.loads(original)
    assert entry["argv"][1:] == [f"resume={run}"] and entry["from_step"] == from_step > 0
    assert set(entry["git"]) == {"commit", "dirty"} and entry["previous_status"] == "running"
    assert datetime.datetime.fromisoformat(entry["time"]).tzinfo is not None
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


def test_a_live_run_keeps_its_directory_and_a_completed_run_is_left_as_it_is(tmp_path):
    run, held, release = tmp_path / "run", tmp_path / "held", tmp_path / "release"
    hold = ["+callbacks.hold._target_=tests.tiny.HoldAt", "+callbacks.hold.step=12", f"+callbacks.hold.marker={held}", f"+callbacks.hold.release={release}"]
    live = start_cli(*TINY, f"hydra.run.dir={run}", *hold, cwd=tmp_path)
    try:
        wait_for(held, live)
        during = records(run)
        second = run_cli(*TINY, f"hydra.run.dir={run}", "optim.wd=0.3", cwd=tmp_path)
        assert second.returncode == 2
        assert last_line(second.stderr).startswith(f"stagetune: config error: {run} is being written by another stagetune run (pid {live.pid} on ")
        assert last_line(second.stderr).endswith("start the new run in another directory (hydra.run.dir=DIR)")
        resume_live = run_cli(f"resume={run}", cwd=tmp_path)
        assert resume_live.returncode == 2 and f"resume it once it has stopped: stagetune resume={run}" in resume_live.stderr
        assert records(run) == during, "neither refused start touched the live run's records"
    finally:
        release.touch()
        _, err = live.communicate(timeout=300)
    assert live.returncode == 0, err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "error" not in metrics

    again = run_cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    assert again.returncode == 2
    assert last_line(again.stderr) == (
        f"stagetune: config error: {run} already holds a run (status: completed); continue it with `stagetune resume={run}`, "
        "or start the new run in another directory (hydra.run.dir=DIR)"
    )
    before = files(run)
    done = run_cli(f"resume={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_line(done.stderr) == f"stagetune: {run} already completed; nothing to resume, nothing changed"
    assert files(run) == before, "every byte, logs and Hydra's copy included"


def test_of_two_runs_started_at_once_into_one_directory_exactly_one_runs(tmp_path):
    run = tmp_path / "run"
    starts = [start_cli(*TINY, f"hydra.run.dir={run}", f"seed={seed}", cwd=tmp_path) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in starts]
    codes = [code for code, _ in results]
    assert sorted(codes) == [0, 2], [err[-2000:] for _, err in results]
    winner = (1, 2)[codes.index(0)]
    assert f"seed: {winner}\n" in (run / "config.yaml").read_text()
    assert f"seed={winner}" in (run / "overrides.yaml").read_text()
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
