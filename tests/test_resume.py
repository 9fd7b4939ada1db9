"""Kill a run with SIGKILL, resume it, and end exactly where the uninterrupted run ends.

The model has dropout, so the random state must travel through the checkpoint too.
"""

import json
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT, run_cli

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny", "model.dropout=0.3"]
STEPS_PER_EPOCH = 8  # 64 samples, batch 8; stages: frozen epochs 0-1, unfrozen epochs 2-4


def run_dir_of(root: Path) -> Path:
    (metrics,) = root.glob("outputs/tiny/*/metrics.json")
    return metrics.parent


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    out = run_cli(*TINY, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir_of(root)


def kill_then_resume(root: Path, step: int) -> Path:
    killed = run_cli(*TINY, "+callbacks.kill._target_=tests.tiny.KillAt", f"+callbacks.kill.step={step}", f"+callbacks.kill.marker={root}/killed", cwd=root)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = run_dir_of(root)
    assert json.loads((run / "metrics.json").read_text())["status"] == "running"
    resumed = run_cli(f"resume={run}", cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.parent for p in root.glob("outputs/tiny/*/metrics.json")] == [run], "resumed in the same directory"
    return run


def assert_same_end(run: Path, reference: Path) -> None:
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 5 * STEPS_PER_EPOCH
    for key in b["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], atol=1e-6, rtol=0, msg=key)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    assert ma["status"] == "completed"
    for key in ("val/loss", "train/loss"):
        assert ma["final"][key] == pytest.approx(mb["final"][key], abs=1e-6), key
    assert ma["stages"] == mb["stages"]


def logged_steps(logdir: Path, tag: str) -> set[int]:
    return {event.step for event in EventAccumulator(str(logdir)).Reload().Scalars(tag)}


def test_killed_mid_unfrozen_stage_resumes_to_the_same_weights(tmp_path, uninterrupted):
    run = kill_then_resume(tmp_path, step=3 * STEPS_PER_EPOCH + 4)
    assert_same_end(run, uninterrupted)
    assert {p.parent for p in run.rglob("events.out.tfevents.*")} == {run / "tensorboard"}
    steps = {d: logged_steps(d / "tensorboard", "val/loss") for d in (run, uninterrupted)}
    assert steps[run] == steps[uninterrupted], "the resumed run appends to the same TensorBoard run"


def test_resume_across_the_stage_boundary(tmp_path, uninterrupted):
    run = kill_then_resume(tmp_path, step=2 * STEPS_PER_EPOCH)
    assert_same_end(run, uninterrupted)
