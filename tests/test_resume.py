"""Stop a run (SIGKILL, SIGTERM mid-epoch or during validation), resume it, and end exactly where the uninterrupted run ends.

The model has dropout, so the random state must travel through the checkpoint too, and a stop
mid-epoch must resume at the next batch of the same epoch order.
"""

import json
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.cli import ROOT, run_cli

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


def assert_same_end(run: Path, reference: Path, steps: int = 5 * STEPS_PER_EPOCH) -> None:
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == steps
    for key in b["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], atol=1e-6, rtol=0, msg=key)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    assert ma["status"] == "completed"
    assert ma["final"].keys() == mb["final"].keys()
    for key in mb["final"]:
        assert ma["final"][key] == pytest.approx(mb["final"][key], abs=1e-6), key
    for key in mb["valid"]:
        assert ma["valid"][key] == pytest.approx(mb["valid"][key], abs=1e-6), key
    assert ma["metric"]["best"] == pytest.approx(mb["metric"]["best"], abs=1e-6)
    assert Path(ma["best"]["checkpoint"]).name == Path(mb["best"]["checkpoint"]).name
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


def signal_then_resume(root: Path, callback: str, step: int, *args: str, **params) -> tuple[Path, str]:
    """Run with a signalling callback from tests.tiny, check it stopped resumable, resume; the run and the stop line."""
    extra = [f"+callbacks.stop.{key}={value}" for key, value in params.items()]
    stopped = run_cli(
        *TINY, *args, f"+callbacks.stop._target_=tests.tiny.{callback}", f"+callbacks.stop.step={step}", f"+callbacks.stop.marker={root}/sent", *extra, cwd=root
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    run = run_dir_of(root)
    (line,) = [line for line in stopped.stderr.splitlines() if line.startswith("stagetune:")]
    assert line.startswith("stagetune: interrupted: SIGTERM received") and line.endswith(f"Continue with: stagetune resume={run}")
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    resumed = run_cli(f"resume={run}", cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run, line


def test_sigterm_mid_epoch_in_the_unfrozen_stage_resumes_to_the_same_weights(tmp_path, uninterrupted):
    run, line = signal_then_resume(tmp_path, "SignalAt", 3 * STEPS_PER_EPOCH + 4)
    assert "stage 'unfrozen', epoch 3, step 29" in line
    assert_same_end(run, uninterrupted)
    steps = {d: logged_steps(d / "tensorboard", "val/loss") for d in (run, uninterrupted)}
    assert steps[run] == steps[uninterrupted]


@pytest.mark.parametrize(
    "callback,step,where",
    [
        ("SignalInValidation", 3 * STEPS_PER_EPOCH, "epoch 2, step 24 during validation"),
        ("SignalAt", 3 * STEPS_PER_EPOCH - 1, "epoch 2, step 24 during validation"),  # the epoch's last batch: stops in the validation after it
    ],
    ids=["during-validation", "at-the-last-batch"],
)
def test_sigterm_during_validation_resumes_to_the_same_weights_and_metrics(tmp_path, uninterrupted, callback, step, where):
    run, line = signal_then_resume(tmp_path, callback, step)
    assert where in line
    assert_same_end(run, uninterrupted)
    history = {d: (d / "history.csv").read_text() for d in (run, uninterrupted)}
    assert history[run].splitlines()[0] == history[uninterrupted].splitlines()[0]
    assert len(history[run].splitlines()) == len(history[uninterrupted].splitlines()), "every epoch validated once"


def test_sigterm_during_the_final_evaluation_is_interrupted_and_resume_evaluates(tmp_path, uninterrupted):
    run, line = signal_then_resume(tmp_path, "SignalInValidation", 5 * STEPS_PER_EPOCH, after_fit="true", batch=0)
    assert "during the validation of the chosen checkpoint, after training finished" in line
    assert_same_end(run, uninterrupted)


def test_last_ckpt_is_the_latest_state_even_when_the_metric_stopped_improving(tmp_path):
    out = run_cli(*TINY, "metric_mode=max", cwd=tmp_path)  # val/loss falls: under max only epoch 0 is ever "best"
    assert out.returncode == 0, out.stderr[-3000:]
    run = run_dir_of(tmp_path)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5 * STEPS_PER_EPOCH
    best = json.loads((run / "metrics.json").read_text())["best"]["checkpoint"]
    assert Path(best).name == f"best-epoch0-step{STEPS_PER_EPOCH}.ckpt"
    assert torch.load(run / best, weights_only=True)["global_step"] == STEPS_PER_EPOCH


def test_a_run_without_validation_killed_then_resumed_ends_as_the_uninterrupted_one(tmp_path):
    no_val = ["trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0"]
    out = run_cli(*TINY, *no_val, cwd=tmp_path / "straight")
    assert out.returncode == 0, out.stderr[-3000:]
    reference = run_dir_of(tmp_path / "straight")
    root = tmp_path / "killed"
    killed = run_cli(
        *TINY,
        *no_val,
        "+callbacks.kill._target_=tests.tiny.KillAt",
        f"+callbacks.kill.step={2 * STEPS_PER_EPOCH + 4}",
        f"+callbacks.kill.marker={root}/killed",
        cwd=root,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = run_dir_of(root)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * STEPS_PER_EPOCH
    stale = run / "checkpoints" / ".last.ckpt.k1ll3d.tmp"  # what a SIGKILL during a checkpoint write leaves
    stale.write_bytes(b"PK\x03\x04 partial")
    resumed = run_cli(f"resume={run}", cwd=root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not stale.exists(), "the next start removes a killed write's temporary file"
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 5 * STEPS_PER_EPOCH
    for key in b["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], atol=1e-6, rtol=0, msg=key)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    assert ma["status"] == "completed" and ma["final"] == pytest.approx(mb["final"], abs=1e-6)


DDP_STEPS_PER_EPOCH = STEPS_PER_EPOCH // 2  # each of 2 ranks takes half of every epoch


@pytest.fixture(scope="module")
def uninterrupted_ddp(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight_ddp")
    out = run_cli(*TINY, "trainer=ddp_cpu", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir_of(root)


def test_sigterm_to_one_ddp_rank_mid_epoch_stops_both_and_resumes_to_the_same_weights(tmp_path, uninterrupted_ddp):
    run, line = signal_then_resume(tmp_path, "SignalAt", 3 * DDP_STEPS_PER_EPOCH + 2, "trainer=ddp_cpu", rank=1)
    assert "epoch 3, step 15" in line
    assert_same_end(run, uninterrupted_ddp, steps=5 * DDP_STEPS_PER_EPOCH)


def every_number(record: dict) -> dict:
    """A run's record without what differs between two machines' runs of it (the time taken)."""
    return {key: value for key, value in record.items() if key not in ("time_s", "cpu_s")}


def test_a_run_copied_mid_run_resumes_evaluates_and_exports_as_the_run_in_place(tmp_path):
    """A copy's records name its own files; its resume keeps the best score so far (under max, only
    epoch 0 is ever best), and once the original is gone it still evaluates its own best checkpoint."""
    import shutil

    from stagetune.commands import evaluate, export
    from tests.helpers.runs import run_main

    killed = run_cli(
        *TINY,
        "metric_mode=max",
        "+callbacks.kill._target_=tests.tiny.KillAt",
        f"+callbacks.kill.step={3 * STEPS_PER_EPOCH + 4}",
        f"+callbacks.kill.marker={tmp_path}/killed",
        cwd=tmp_path / "a",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    original = run_dir_of(tmp_path / "a")
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy, ignore=shutil.ignore_patterns(".lock"))
    for run in (original, copy):
        resumed = run_cli(f"resume={run}", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads((run / "metrics.json").read_text()) for run in (original, copy)]
    assert every_number(records[1]) == every_number(records[0])
    assert records[1]["best"]["checkpoint"] == f"checkpoints/best-epoch0-step{STEPS_PER_EPOCH}.ckpt"
    assert_same_end(copy, original)
    shutil.rmtree(original)
    assert run_main(evaluate, copy, "--split", "valid") == 0
    evaluated = json.loads((copy / "eval-valid.json").read_text())
    assert evaluated["checkpoint"] == records[1]["best"]["checkpoint"]
    assert evaluated["metrics"] == pytest.approx(records[1]["valid"], abs=1e-6)
    assert run_main(export, copy, "--format", "torchscript", "--out", tmp_path / "model.pt") == 0
