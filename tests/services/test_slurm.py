"""Sweeps and DDP jobs through a real SLURM cluster (one node, on loopback), by ``hydra/launcher=slurm_cpu``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers.cli import ROOT, run_cli
from tests.test_resume import assert_same_end

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny", "hydra/launcher=slurm_cpu"]


def submit(slurm, *args: str, cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    """``stagetune -m ARGS`` as a user on the cluster's login node runs it: it submits, waits for the jobs, reports."""
    env = {**slurm.env(), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "stagetune", "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def job_logs(sweep: Path) -> str:
    return "".join(p.read_text() for p in sorted(sweep.glob(".submitit/*/*.err")) + sorted(sweep.glob(".submitit/*/*.out")))


def test_a_two_job_sweep_runs_as_two_slurm_jobs_and_both_runs_complete(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    done = submit(slurm, *TINY, "optim.wd=0,0.1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:] + job_logs(sweep)[-3000:]

    results = sorted(p.name.split("_")[1] for p in sweep.glob(".submitit/*_*/*_result.pkl"))
    assert results == ["0", "1"], results  # one SLURM array task per sweep point, each returned its value
    for num, wd in ((0, 0.0), (1, 0.1)):
        run = sweep / str(num)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "completed", metrics
        assert (run / "checkpoints" / "last.ckpt").exists() and (run / "config.yaml").exists()
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5 * 8
        assert f"wd: {wd}" in (run / "config.yaml").read_text()
    assert "completed" in (sweep / "summary.csv").read_text()


def test_a_two_task_ddp_job_keeps_its_ranks_in_sync(slurm, tmp_path):
    sweep, dumps = tmp_path / "sweep", tmp_path / "dumps"
    done = submit(
        slurm,
        *TINY,
        "trainer=ddp_cpu",
        "hydra.launcher.tasks_per_node=2",
        "optim.wd=0.1",
        f"hydra.sweep.dir={sweep}",
        "+callbacks.weights._target_=tests.tiny.StateDump",
        f"+callbacks.weights.out={dumps}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:] + job_logs(sweep)[-3000:]

    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"
    for epoch in range(5):
        weights = [torch.load(dumps / f"rank{r}-epoch{epoch}.pt", weights_only=True) for r in (0, 1)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), f"epoch {epoch}: the ranks differ"
    assert not list(dumps.glob("rank2-*")), "two ranks, one per SLURM task"


def squeue(slurm) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, env=slurm.env(), check=True)
    return out.stdout.split("\n")[:-1]


def wait_for(what: str, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_job_requeued_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(slurm, tmp_path):
    hold = [  # held at step 20 (the middle of epoch 2) until the requeue's SIGTERM has reached the run
        "model.dropout=0.3",
        "+callbacks.hold._target_=tests.tiny.HoldUntilSignalled",
        f"+callbacks.hold.step={2 * 8 + 4}",
        f"+callbacks.hold.marker={tmp_path / 'holding'}",
    ]
    sweep = tmp_path / "sweep"
    env = {**slurm.env(), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    submitter = subprocess.Popen(
        [sys.executable, "-m", "stagetune", "-m", *TINY, *hold, "optim.wd=0.1", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for("the job to reach the middle of epoch 2", (tmp_path / "holding").exists)
        (job,) = [line.split()[0] for line in squeue(slurm)]
        subprocess.run(["scontrol", "requeue", job], env=slurm.env(), check=True, capture_output=True)
        out, _ = submitter.communicate(timeout=400)
    finally:
        submitter.kill()
    run = sweep / "0"
    wait_for("the requeued job to finish", lambda: not squeue(slurm))
    assert submitter.returncode == 0, out[-3000:] + job_logs(sweep)[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed", (metrics, job_logs(sweep)[-4000:])
    (resume,) = json.loads((run / "run.json").read_text())["resumes"]
    assert resume["previous_status"] == "interrupted" and resume["from_step"] == 2 * 8 + 5

    reference = run_cli(*TINY[:2], *hold[:1], "optim.wd=0.1", f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert_same_end(run, tmp_path / "straight")
