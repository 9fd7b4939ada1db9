"""The benchmark harness's arithmetic and the GPU check's CPU-safe parts."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.harness import Figure, against, per_step, side_by_side, table
from stagetune.vision.models import ResNet34Classifier


def test_side_by_side_alternates_the_order_and_divides_a_by_b():
    calls = []

    def a():
        calls.append("a")
        return 3.0

    def b():
        calls.append("b")
        return 2.0

    assert side_by_side(a, b, 3) == [1.5, 1.5, 1.5]
    assert calls == ["a", "b", "b", "a", "a", "b"]


def test_one_a_serves_several_bs_in_a_rotating_order():
    calls = []

    def side(name, value):
        return lambda: calls.append(name) or value

    assert against(side("a", 6.0), [side("b", 2.0), side("c", 3.0)], 2) == [[3.0, 3.0], [2.0, 2.0]]
    assert calls == ["a", "b", "c", "c", "b", "a"]


def test_per_step_skips_the_warm_up_steps():
    assert per_step([0.0, 5.0, 6.0, 7.0, 8.0], warmup=2) == pytest.approx(1.0)


def test_figure_checks_its_target_in_the_right_direction():
    assert Figure("f", "a", "b", [0.4, 0.6, 0.45], 0.5, higher_is_better=False).met
    assert not Figure("f", "a", "b", [0.9, 0.99, 0.95], 0.97, higher_is_better=True).met


def test_a_reference_figure_has_no_verdict():
    figure = Figure("floor", "a", "b", [0.8, 0.7, 0.9], None, higher_is_better=True)
    assert figure.met is None and figure.row()["target_text"] == "reference"
    assert table([figure]).splitlines()[2].endswith("| reference | - |")


def test_resnet34_forward_flops_at_224_px():
    """torchvision lists 3.66 G multiply-adds for ResNet34 at 224 px: 7.3 GFLOPs plus the head."""
    model = ResNet34Classifier(n_classes=10, head="linear", weights=None).eval()
    assert gpu_check.forward_flops(model, 224) == pytest.approx(7.34e9, rel=0.01)


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None)],
)
def test_bf16_peak_by_card_name(name, peak):
    assert gpu_check.bf16_peak(name) == peak


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_cleanly_without_cuda(capsys):
    assert gpu_check.main([]) == 1
    assert capsys.readouterr().err == "gpu_check: no CUDA device visible; run it on a machine with an NVIDIA GPU\n"


def test_quick_figures_are_indicative_and_never_met():
    figure = Figure("f", "a", "b", [0.1, 0.2], target=1.0, higher_is_better=False, indicative=True)
    assert figure.met is None
    text = table([figure])
    assert "indicative" in text and "| yes |" not in text


def test_fastai_benchmark_writes_the_same_three_parts_with_raw_ids(tmp_path):
    """fastai trains and is scored on exactly stagetune's parts: every rating once, ids as in u.data."""
    import numpy as np

    from benchmarks.cases import config
    from benchmarks.fastai_collab import write_parts
    from tests.helpers.ratings import N_RATINGS, write_u_data

    write_u_data(tmp_path / "data", test_shift=0)
    out = tmp_path / "parts"
    out.mkdir()
    write_parts(config(["experiment=movielens_fastai", f"data.path={tmp_path / 'data'}"]), out)
    raw = {tuple(row[:3]) for row in np.loadtxt(tmp_path / "data" / "u.data", dtype=int)}
    parts = {name: np.loadtxt(out / f"{name}.tsv", ndmin=2) for name in ("train", "valid", "test")}
    assert sum(len(p) for p in parts.values()) == N_RATINGS
    assert len(parts["test"]) == N_RATINGS // 5  # u1.test: the first fifth of u.data's lines
    assert (parts["train"][:, :2] > 0).all()  # every training id is known
    for part in parts.values():
        known = part[(part[:, 0] > 0) & (part[:, 1] > 0)].astype(int)
        assert {tuple(row) for row in known} <= raw


def test_the_peer_table_gives_each_models_mean_and_sample_sd_over_seeds_and_the_u1_u5_mean():
    from benchmarks.collab_peers import table

    runs = [
        {"seed": s, "split_seed": 42, "valid_rmse": v, "test_rmse": t, "cpu_s": c}
        for s, v, t, c in ((0, 0.90, 0.92, 10.0), (1, 0.91, 0.94, 30.0), (2, 0.92, 0.93, 20.0))
    ]
    one = lambda test: [{"seed": 0, "split_seed": 42, "valid_rmse": 0.9, "test_rmse": test, "cpu_s": 5.0}]  # noqa: E731
    split_runs = [{**r, "split_seed": k} for k, r in enumerate(runs)]
    folds = {f"u{k}": {"surprise_svd": one(0.90 + k / 100)} for k in range(2, 6)}
    lines = table({"u1": {"movielens": runs, "surprise_svd": one(0.91)}, **folds, "random": {"movielens": split_runs}}).splitlines()
    protocol = "chosen on valid, refit on train + valid"
    assert lines[2] == f"| u1 | stagetune `experiment=movielens` (dot_bias) | {protocol} | 3 | 0.9100 ± 0.0100 | 0.9300 ± 0.0100 | 20.0 |"
    assert (
        lines[8]
        == f"| random 80/20, split seeds 0, 1, 2 | stagetune `experiment=movielens` (dot_bias) | {protocol} | 3 | 0.9100 ± 0.0100 | 0.9300 ± 0.0100 | 20.0 |"
    )
    assert lines[9] == "| u1-u5 mean | Surprise `SVD` | defaults, train only | 5 | 0.9000 | 0.9300 | 5.0 |" and len(lines) == 10


def test_every_peer_recipe_is_a_shipped_experiment_with_a_table_label():
    from pathlib import Path

    from benchmarks.collab_peers import LABELS, RECIPES

    experiments = Path(__file__).resolve().parent.parent / "conf" / "experiment"
    assert "movielens_svdpp_side" in RECIPES
    assert [name for name in RECIPES if not (experiments / f"{name}.yaml").exists() or name not in LABELS] == []
