"""make docs rewrites the generated blocks of the docs' results pages from real runs, names the machine, and fails loudly."""

import json
from pathlib import Path

import pytest

from scripts import make_docs
from scripts.make_docs import DocsError, rewrite

PAGE = """# x
intro
<!-- make docs: universal_approx -->
old numbers typed by hand
<!-- /make docs: universal_approx -->
tail
"""


def test_a_block_is_replaced_with_its_body_and_stamp_and_the_rest_kept():
    out = rewrite(PAGE, "universal_approx", "| a | b |", "Generated on a 2-core CPU")
    assert out == PAGE.replace("old numbers typed by hand\n", "| a | b |\n\n_Generated on a 2-core CPU_\n")
    assert rewrite(out, "universal_approx", "new", "stamp").count("<!-- make docs: universal_approx -->") == 1


def test_a_page_without_the_block_is_an_error_naming_it():
    with pytest.raises(DocsError, match="no block <!-- make docs: tensorboard -->"):
        rewrite(PAGE, "tensorboard", "x", "y")


def test_every_block_of_the_docs_is_a_section_on_its_page_and_the_readme_has_none():
    docs = Path(make_docs.ROOT) / "docs"
    found = {
        (name, page.relative_to(docs).as_posix())
        for page in docs.rglob("*.md")
        for name in make_docs.re.findall(r"<!-- make docs: (\w+) -->", page.read_text())
    }
    assert found == {(s.name, s.page) for s in make_docs.SECTIONS.values()}
    assert "<!-- make docs:" not in (Path(make_docs.ROOT) / "README.md").read_text()


def write_page(tmp_path: Path, page: str, text: str) -> Path:
    """A docs folder holding one page, as the project's docs/ holds it."""
    path = tmp_path / "docs" / page
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_quick_universal_approx_writes_the_runs_numbers_into_a_copy(tmp_path):
    page = write_page(tmp_path, "results/optimizer.md", PAGE)
    code = make_docs.main(
        ["--only", "universal_approx", "--quick", "--docs", str(tmp_path / "docs"), "--images", str(tmp_path / "img"), "--out", str(tmp_path / "out")]
    )
    assert code == 0
    (metrics,) = (tmp_path / "out").glob("*/universal_approx/metrics.json")
    run = json.loads(metrics.read_text())
    text = page.read_text()
    for width in (2, 8, 32, 128):
        assert f"| {width} | {run['valid'][f'val/mse/w{width}']:.1e} | {run['test'][f'test/mse/w{width}']:.1e} |" in text
    assert "old numbers typed by hand" not in text and f"on a {make_docs.machine()}" in text and "quick check" in text
    assert (tmp_path / "img" / "universal_approx.png").read_bytes()[:4] == b"\x89PNG"
    assert "](../../img/universal_approx.png)" in text  # linked from the page's own folder


def fake_sweep(root: Path, jobs: list[dict[str, str]], wall: float = 42.0, common: list[str] = ()) -> Path:
    """A sweep directory as stagetune and its report leave it: one job directory each, summary.csv, summary.png."""
    root.mkdir(parents=True)
    header = list(jobs[0])
    lines = [",".join(header)] + [",".join(job[h] for h in header) for job in jobs]
    (root / "summary.csv").write_text("\n".join(lines) + "\n")
    (root / "summary.png").write_bytes(b"\x89PNG fake")
    (root / "wall_s.txt").write_text(f"{wall}\n")
    for job in jobs:
        (root / job["job"]).mkdir()
        swept = [f"{k}={v}" for k, v in job.items() if "." in k and "/" not in k]
        (root / job["job"] / "overrides.yaml").write_text("".join(f"- {item}\n" for item in ["experiment=movielens", *swept, *common]))
        (root / job["job"] / "metrics.json").write_text(json.dumps({"data": {"noise_floor": 0.8391}}))
    return root


class SweepRunner(make_docs.Runner):
    """A runner whose sweeps are prepared directories: the section's table is tested without training."""

    def __init__(self, tmp_path: Path, sweeps: dict[str, Path]) -> None:
        super().__init__(tmp_path / "out", tmp_path / "img", quick=False)
        self.sweeps = sweeps

    def sweep(self, name: str, *overrides: str) -> Path:
        return self.sweeps[name]


def job(name: str, status: str = "completed", error: str = "", **values: str) -> dict[str, str]:
    return {"job": name, "status": status, **{k.replace("__", "."): v for k, v in values.items()}, "error": error}


def test_wd_l2_sweep_writes_each_decay_with_train_valid_test_and_marks_the_valid_minimum(tmp_path):
    rows = [
        job("0", optim__wd="1e-06", **{"val/rmse best": "1.025", "train_eval/rmse": "0.131", "test/rmse": "1.039", "time_s": "13"}),
        job("1", optim__wd="0.0001", **{"val/rmse best": "0.9181", "train_eval/rmse": "0.508", "test/rmse": "0.940", "time_s": "17"}),
        job("2", optim__wd="0.01", **{"val/rmse best": "1.042", "train_eval/rmse": "1.05", "test/rmse": "1.085", "time_s": "15"}),
    ]
    runner = SweepRunner(tmp_path, {"wd_l2": fake_sweep(tmp_path / "wd_l2", rows)})
    text = make_docs.wd_l2_sweep(runner)
    assert "| `optim.wd` (L2) | 1e-6 | 1e-4 | 1e-2 |" in text
    assert "| train RMSE (eval mode) | 0.131 | 0.508 | 1.050 |" in text
    assert "| valid RMSE (chooses) | 1.025 | **0.918** | 1.042 |" in text
    assert "| test RMSE (u1.test) | 1.039 | 0.940 | 1.085 |" in text
    assert "valid is lowest at wd 1e-4 (0.918)" in text and "3 jobs, 42 s" in text and "13-17 s of fitting" in text
    assert (tmp_path / "img" / "wd_l2_sweep.png").read_bytes() == b"\x89PNG fake"


def test_a_sweep_with_a_failed_job_is_an_error_naming_the_job(tmp_path):
    rows = [job("0", optim__wd="1e-06", **{"val/rmse best": "1.0"}), job("1", "failed", "ConfigError: x", optim__wd="-1", **{"val/rmse best": ""})]
    with pytest.raises(DocsError, match="job 1: failed ConfigError: x"):
        make_docs.sweep_jobs(fake_sweep(tmp_path / "s", rows))


def test_wd_lr_sweep_writes_the_grid_in_numeric_order_with_the_best_cell_and_the_noise_floor(tmp_path):
    cells = {("0", "0.02"): "0.95", ("0", "0.005"): "0.93", ("0.1", "0.02"): "0.96", ("0.1", "0.005"): "0.9271"}
    rows = [job(str(k), optim__wd=wd, plan__lr=lr, **{"val/rmse best": v}) for k, ((wd, lr), v) in enumerate(cells.items())]
    text = make_docs.wd_lr_sweep(SweepRunner(tmp_path, {"wd_lr": fake_sweep(tmp_path / "wd_lr", rows)}))
    assert "| best val/rmse: `optim.wd` \\ `plan.lr` | 0.005 | 0.02 |" in text
    assert "| 0 | 0.9300 | 0.9500 |" in text and "| 0.1 | **0.9271** | 0.9600 |" in text
    assert "noise floor of these ratings (the true model's RMSE on valid) is 0.839" in text
    assert "weight decay moves the best val/rmse by at most 0.0100; at a fixed wd, the LR by up to 0.0329" in text


def test_a_recipe_sweep_shows_train_and_test_beside_valid_and_marks_the_valid_choice(tmp_path):
    rows = [
        job("0", optim__wd="0.0002", plan__lr="0.005", **{"val/rmse best": "0.9108", "train_eval/rmse": "0.847", "test/rmse": "0.9372"}),
        job("1", optim__wd="0.0001", plan__lr="0.01", **{"val/rmse best": "0.9040", "train_eval/rmse": "0.680", "test/rmse": "0.9292"}),
        job("2", optim__wd="0.0001", plan__lr="0.005", **{"val/rmse best": "0.9037", "train_eval/rmse": "0.751", "test/rmse": "0.9288"}),
    ]
    # model.n_factors is set on every job's command line but not varied: the report leaves it out, the table does not
    sweep = fake_sweep(tmp_path / "r", rows, common=["model.n_factors=50"])
    lines = make_docs.recipe_table(sweep, {"optim.wd": "`optim.wd` (L2)", "plan.lr": "plan.lr", "model.n_factors": "factors"}).splitlines()
    assert lines[0] == "| `optim.wd` (L2) | `plan.lr` | factors | valid RMSE (chooses) | train RMSE (eval) | test RMSE |"
    assert lines[2:5] == [
        "| 1e-4 | 5e-3 | 50 | **0.9037** (chosen) | 0.751 | 0.9288 |",
        "| 1e-4 | 1e-2 | 50 | 0.9040 | 0.680 | 0.9292 |",
        "| 2e-4 | 5e-3 | 50 | 0.9108 | 0.847 | 0.9372 |",
    ]


def test_bench_writes_every_figure_and_marks_a_missed_target(tmp_path, monkeypatch):
    figures = [
        {
            "name": "pipeline overhead, dot_bias batch 1024",
            "median": 0.5584,
            "min": 0.452,
            "max": 0.677,
            "target": 0.85,
            "target_text": ">= 0.85",
            "met": False,
        },
        {"name": "bare Lightning, dot_bias batch 1024", "median": 0.669, "min": 0.642, "max": 0.914, "target": None, "target_text": "reference", "met": None},
        {"name": "ratings epoch at 100,000", "median": 0.319, "min": 0.27, "max": 0.38, "target": 1.0, "target_text": "<= 1", "met": True},
    ]
    context = {"cpu cores": 2, "repeats": 3, "timed steps (after warm-up)": "8 (after 3)", "wall time s": 524.0, "load average at end": "1.2 1.0 0.9"}
    monkeypatch.setattr(make_docs.Runner, "benchmarks", lambda self, *args: {"context": context, "figures": figures})
    lines = make_docs.bench(make_docs.Runner(tmp_path, tmp_path, quick=False)).splitlines()
    assert "shared" not in lines[-1]
    assert lines[2:5] == [
        "| pipeline overhead, dot_bias batch 1024 | 0.558 | 0.452-0.677 | >= 0.85 | **no** |",
        "| bare Lightning, dot_bias batch 1024 | 0.669 | 0.642-0.914 | - | - |",
        "| ratings epoch at 100,000 | 0.319 | 0.27-0.38 | <= 1 | yes |",
    ]
    assert "3 repeats, 8 (after 3) timed steps, 9 min in all; load average at the end 1.2 1.0 0.9" in lines[-1]
    context["load average at end"] = "5.0 4.1 1.9"  # other jobs on the cores: the table says so
    assert "**The machine was shared**: more runnable jobs than its 2 cores" in make_docs.bench(make_docs.Runner(tmp_path, tmp_path, quick=False))


def test_quick_sgd_line_writes_the_fitted_and_least_squares_lines_and_both_pictures(tmp_path):
    page = write_page(tmp_path, "results/optimizer.md", PAGE.replace("universal_approx", "sgd_line"))
    code = make_docs.main(
        ["--only", "sgd_line", "--quick", "--docs", str(tmp_path / "docs"), "--images", str(tmp_path / "img"), "--out", str(tmp_path / "out")]
    )
    assert code == 0
    (metrics,) = (tmp_path / "out").glob("*/sgd_line/metrics.json")
    run = json.loads(metrics.read_text())
    text = page.read_text()
    assert f"| SGD's (the checkpoint valid chose) | {run['valid']['fit/a']:.2f} | {run['valid']['fit/b']:.2f} |" in text
    assert f"| least squares on the 100 points | {run['data']['least_squares_a']:.2f} | {run['data']['least_squares_b']:.2f} |" in text
    assert f"valid {run['valid']['val/loss']:.5f}, test {run['test']['test/loss']:.5f}" in text
    assert (tmp_path / "img" / "sgd_line.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "img" / "sgd_line.gif").read_bytes()[:3] == b"GIF"
