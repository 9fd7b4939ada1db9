"""The run's history: one row per epoch on the terminal, in a log file and in history.csv; a quiet terminal."""

import csv
import io
import json

import pytest

from stagetune.engine.history import History, columns, format_table
from stagetune.engine.progress import EpochLines, StageProgressBar, progress_for
from tests.helpers.cli import NOISE, run_cli

RUN = ["experiment=ratings_synthetic", "data.n_ratings=3000", "data.n_users=60", "data.n_items=80", "data.batch_size=64", "plan.stages.all.epochs=3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("history")
    out = run_cli(*RUN, cwd=cwd)
    assert out.returncode == 0, out.stderr
    (run_dir,) = [p.parent for p in cwd.glob("outputs/ratings_synthetic/*/metrics.json")]
    return out, run_dir


def test_output_to_a_file_is_one_line_per_epoch_under_a_header(run):
    out, _ = run
    lines = out.stdout.splitlines()
    assert lines[0].startswith("plan: 1 stage(s)"), "the plan's table comes first"
    lines = lines[next(k for k, line in enumerate(lines) if line.startswith("epoch ")) :]
    assert lines[0].split() == ["epoch", "stage", "train/loss", "val/loss", "val/mae", "val/rmse", "time"]
    assert [line.split()[:2] for line in lines[1:]] == [["1", "all"], ["2", "all"], ["3", "all"]]
    assert "\r" not in out.stdout and "it/s" not in out.stdout, "no progress bar is written into a log file"


def test_history_csv_holds_each_epoch_with_the_metrics_of_the_run(run):
    _, run_dir = run
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and {r["stage"] for r in rows} == {"all"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert float(rows[-1]["val/rmse"]) == pytest.approx(metrics["final"]["val/rmse"], abs=1e-7)
    assert float(rows[-1]["train/loss"]) == pytest.approx(metrics["final"]["train/loss"], abs=1e-7)
    assert min(float(r["val/rmse"]) for r in rows) == pytest.approx(metrics["metric"]["best"], abs=1e-7)
    assert all(float(r["time_s"]) > 0 for r in rows)


def test_the_terminal_gets_no_library_noise_and_train_log_gets_it_all(run):
    out, run_dir = run
    for noise in NOISE:
        assert noise not in out.stderr and noise not in out.stdout, noise
    log = (run_dir / "train.log").read_text()
    assert "GPU available" in log and "Trainer.fit` stopped" in log, "Lightning's lines are kept in the run's log"
    assert "💡 Tip" not in log


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_bar_and_a_file_gets_lines():
    assert isinstance(progress_for(Tty(), "val/loss"), StageProgressBar)
    assert isinstance(progress_for(io.StringIO()), EpochLines)


def test_rows_survive_a_checkpoint_and_a_repeated_epoch_is_kept_once():
    history = History()
    history.rows = [{"epoch": 1, "stage": "frozen", "train/loss": 1.0, "val/loss": 0.9, "time_s": 2.0}]
    restored = History()
    restored.load_state_dict(history.state_dict())
    assert restored.rows == history.rows
    again = {"epoch": 1, "stage": "frozen", "train/loss": 0.5, "val/loss": 0.4, "time_s": 1.0}
    restored.rows = [r for r in restored.rows if r["epoch"] != again["epoch"]] + [again]
    assert restored.rows == [again]


def test_the_table_puts_val_loss_first_and_formats_numbers_and_time():
    rows = [
        {"epoch": 1, "stage": "frozen", "train/loss": 1.23456, "val/loss": 0.9, "val/acc": 0.5, "time_s": 2.04},
        {"epoch": 2, "stage": "unfrozen", "train/loss": 0.5, "time_s": 75.0},
    ]
    assert columns(rows) == ["epoch", "stage", "train/loss", "val/loss", "val/acc", "time_s"]
    header, first, second = format_table(rows).splitlines()
    assert header.split() == ["epoch", "stage", "train/loss", "val/loss", "val/acc", "time"]
    assert first.split() == ["1", "frozen", "1.2346", "0.9000", "0.5000", "2.0s"]
    assert second.split() == ["2", "unfrozen", "0.5000", "1:15"], "an epoch without validation leaves its cells empty"
