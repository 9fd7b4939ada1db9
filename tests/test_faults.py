"""Faults: divergence, interruption, half-written and hostile checkpoints, and the user-error table."""

import json
import signal

import pytest
import pytorch_lightning as pl
import torch

from stagetune.engine.faults import AtomicCheckpointIO, check_checkpoint, finite
from stagetune.errors import StagetuneError
from tests.helpers.cli import ROOT, run_cli

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("stagetune:")]


def test_divergence_stops_with_stage_epoch_step_lrs_and_keeps_the_last_good_checkpoint(tmp_path):
    out = run_cli(*TINY, "model.nan_at_step=10", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    (line,) = error_lines(out.stderr)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert line.startswith("stagetune: diverged: loss became nan in stage 'frozen', epoch 1, step 10 (lr ")
    assert "head=" in line and f"last good checkpoint: {last}" in line and "Hint: lower plan.lr" in line
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "diverged"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


@pytest.mark.parametrize(
    "loss, expected",
    [
        (torch.tensor(2.5), True),
        (torch.tensor(float("nan")), False),
        (torch.tensor(float("-inf")), False),
        (torch.tensor([1.0, 2.0]), True),
        (torch.tensor([1.0, float("inf")]), False),
        (torch.tensor([float("nan")], dtype=torch.bfloat16), False),
    ],
)
def test_the_guard_reads_one_value_losses_and_whole_tensors_alike(loss, expected):
    assert finite(loss.requires_grad_()) is expected


def test_a_diverged_sweep_job_is_marked_and_the_others_complete(tmp_path):
    out = run_cli("-m", *TINY, "model.nan_at_step=-1,3", "plan.stages.frozen.epochs=1", "plan.stages.unfrozen.epochs=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (sweep,) = tmp_path.glob("outputs/tiny/multirun/*")
    statuses = [json.loads((sweep / str(job) / "metrics.json").read_text())["status"] for job in (0, 1)]
    assert statuses == ["completed", "diverged"]
    assert "diverged" in (sweep / "summary.md").read_text()


def test_sigterm_checkpoints_marks_interrupted_and_resume_finishes(tmp_path):
    signal_at = ["+callbacks.stop._target_=tests.tiny.SignalAt", "+callbacks.stop.step=20", f"+callbacks.stop.marker={tmp_path}/sent"]
    out = run_cli(*TINY, *signal_at, "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-2000:]
    (line,) = error_lines(out.stderr)
    assert line.startswith("stagetune: interrupted: SIGTERM received at stage 'unfrozen', epoch 2, step 21")
    assert f"resume={tmp_path / 'run'}" in line
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 21
    resumed = run_cli(f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 40


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temporary file left behind"


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_truncated_foreign_and_code_carrying_files_are_refused_by_name(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:100])
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a checkpoint")
    hostile = tmp_path / "hostile.pth"
    torch.save({"state_dict": Payload()}, hostile)
    assert "state_dict" in check_checkpoint(good, "resume")
    for path in (truncated, foreign):
        with pytest.raises(StagetuneError, match=rf"resume: {path} is not a readable checkpoint"):
            check_checkpoint(path, "resume")
    with pytest.raises(StagetuneError, match="holds pickled code, which stagetune refuses to run"):
        check_checkpoint(hostile, "model.weights")


def test_resume_from_a_foreign_checkpoint_is_one_line(tmp_path):
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    out = run_cli(*TINY, f"ckpt_path={ckpt}", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert error_lines(out.stderr) == [f"stagetune: error: ckpt_path: {ckpt} is not a stagetune training checkpoint (no stage plan state in it)"]


CATALOGUE = [
    (
        ["plan.stages.frozen.freeze_to=5"],
        2,
        "stagetune: config error: plan.stages.frozen.freeze_to=5: the model has 3 layer groups: allowed -3..2 (-1 trains the last group only, 0 trains all)",
    ),
    (
        ["plan.stages.unfrozen.lr=[1e-2,1e-4]"],
        2,
        "stagetune: config error: plan.stages.unfrozen.lr=[0.01, 0.0001]: the low end is above the high end; a learning rate is a number > 0, [hi] with hi > 0, or [lo, hi] with 0 < lo <= hi, or find",
    ),
    (
        ["plan.stages.unfrozen.lr=[-1,1e-4]"],
        2,
        "stagetune: config error: plan.stages.unfrozen.lr=[-1, 0.0001]: every end must be finite and > 0; a learning rate is a number > 0, [hi] with hi > 0, or [lo, hi] with 0 < lo <= hi, or find",
    ),
    (
        ["trainer=gpu"],
        2,
        "stagetune: config error: trainer.devices=1: this machine has 0 GPU(s); ask for at most 0, or use trainer=cpu (one process) or trainer=ddp_cpu (DDP over CPU processes)",
    ),
    (["data.batch_size=1000"], 2, "stagetune: config error: data.batch_size=1000: the training split has 64 examples; use at most 64"),
]


@pytest.mark.parametrize("overrides,code,message", CATALOGUE)
def test_user_error_catalogue(tmp_path, overrides, code, message):
    if "trainer=gpu" in overrides and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = run_cli(*TINY, *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == code, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert error_lines(out.stderr) == [message]


def test_an_unwritable_output_directory_is_one_line_with_exit_1(tmp_path):
    (tmp_path / "afile").write_text("")
    out = run_cli(*TINY, f"hydra.run.dir={tmp_path}/afile/run", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert error_lines(out.stderr) == [
        f"stagetune: error: cannot write the run directory {tmp_path}/afile/run: Not a directory; "
        "run from a writable directory or choose one with hydra.run.dir=DIR (sweeps: hydra.sweep.dir=DIR)"
    ]


def test_data_error_catalogue(tmp_path):
    """Missing data path, malformed ratings line, corrupt image, inverted y_range: one line each."""
    from PIL import Image

    (tmp_path / "u.data").write_text("1\t2\t4\t881250949\n1\tx\t3\n")
    for split, cls in (("train", "a"), ("train", "b"), ("valid", "a"), ("valid", "b")):
        (tmp_path / "imgs" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / split / cls / "1.png")
    (tmp_path / "imgs" / "train" / "a" / "bad.jpg").write_text("not an image")
    cases = [
        (["experiment=movielens", f"data.path={tmp_path}/nowhere"], 1,
         f"stagetune: error: no MovieLens ratings file (u.data, ratings.dat or ratings.csv) in {tmp_path}/nowhere: "
         "unzip https://files.grouplens.org/datasets/movielens/ml-100k.zip there, set data.download=true, or leave data.path unset for the bundled ML-100k"),
        (["experiment=movielens", f"data.path={tmp_path}"], 1,
         f"stagetune: error: {tmp_path}/u.data:2: expected USER<TAB>ITEM<TAB>RATING<TAB>TIMESTAMP "
         "(integer ids, a number, an integer), got '1\\tx\\t3'"),
        (["experiment=pets", "data=image_folder", f"data.root={tmp_path}/imgs", "model.weights=null", "data.size=32", "data.batch_size=2"], 1,
         f"stagetune: error: 1 unreadable image file(s) in {tmp_path}/imgs/train: {tmp_path}/imgs/train/a/bad.jpg "
         "(fix or remove them, or set data.skip_bad_files=true)"),
        (["experiment=ratings_synthetic", "model.y_range=[5.5,0]"], 2,
         "stagetune: config error: model.y_range=[5.5, 0]: two finite numbers [lo, hi] with lo < hi"),
    ]  # fmt: skip
    for k, (overrides, code, message) in enumerate(cases):
        out = run_cli(*overrides, f"hydra.run.dir=run{k}", cwd=tmp_path)
        assert (out.returncode, error_lines(out.stderr)) == (code, [message]), out.stderr[-2000:]
        assert "Traceback" not in out.stderr


def test_a_killed_writes_temporaries_are_what_the_next_start_removes(tmp_path):
    left = [tmp_path / ".last.ckpt.a1b2c3.tmp", tmp_path / ".best-epoch1-step8.ckpt.d4e5f6.tmp"]
    kept = [tmp_path / "last.ckpt", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in (*left, *kept):
        path.write_bytes(b"x")
    assert AtomicCheckpointIO.remove_stale(tmp_path) == sorted(left)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_lightning_loop_state_is_what_rewind_validation_expects(tmp_path):
    """Lightning 2.6's private loop layout, which rewind_validation writes: this fails when Lightning changes it."""
    from pytorch_lightning.demos.boring_classes import BoringModel

    from stagetune.engine.faults import rewind_validation
    from tests.tiny import quiet_trainer

    class Stop(Exception):
        pass

    class SaveInValidation(pl.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            if batch_idx == 1 and not trainer.sanity_checking:
                trainer.save_checkpoint(tmp_path / "mid.ckpt")
                raise Stop

    class Validated(pl.Callback):
        def __init__(self) -> None:
            self.batches: list[tuple[int, int]] = []

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.batches.append((trainer.current_epoch, batch_idx))

    args = dict(max_epochs=2, limit_train_batches=2, limit_val_batches=3, num_sanity_val_steps=0)
    with pytest.raises(Stop):
        quiet_trainer(**args, callbacks=[SaveInValidation()]).fit(BoringModel())
    state = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    progress = state["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    assert set(progress) == {"total", "current", "is_last_batch"}
    assert set(progress["current"]) == {"ready", "started", "processed", "completed"}
    rewind_validation(state)
    torch.save(state, tmp_path / "rewound.ckpt")
    validated = Validated()
    quiet_trainer(**args, callbacks=[validated]).fit(BoringModel(), ckpt_path=tmp_path / "rewound.ckpt")
    assert validated.batches == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)], "the interrupted validation runs again, whole"
