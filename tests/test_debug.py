"""The ``debug=`` group: Lightning's debugging switches as presets, kept apart from results."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import TensorDataset

from stagetune.app import conf_dir
from stagetune.config import validate
from stagetune.engine.loaders import epoch_loader
from stagetune.runs.sweep_report import Report
from tests.helpers.cli import ROOT, run_cli
from tests.tiny import TinyNet, quiet_trainer

PRESETS = {
    "fdr": {"fast_dev_run": True},
    "overfit": {"overfit_batches": 2},
    "limit": {"limit_train_batches": 3},
    "profiler": {"profiler": "simple"},
    "anomaly": {"detect_anomaly": True},
}


@pytest.mark.parametrize(("name", "trainer"), PRESETS.items())
def test_each_preset_sets_lightnings_switch_and_names_itself(name, trainer):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = validate(compose("train", overrides=["experiment=ratings_synthetic", f"debug={name}"]))
    assert cfg.debug == name
    assert {key: cfg.trainer[key] for key in trainer} == trainer


class SeenBatches(TinyNet):
    """Records the rows of every training batch, per epoch."""

    def __init__(self) -> None:
        super().__init__(n_in=1)
        self.seen: dict[int, list[list[float]]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).append(batch[0][:, 0].tolist())
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("whole_batches", [False, True])
def test_overfit_batches_trains_on_the_first_batches_in_order_every_epoch(whole_batches):
    x = torch.arange(40, dtype=torch.float32).unsqueeze(1)
    data = TensorDataset(x, torch.zeros(40, dtype=torch.long))
    loader = epoch_loader(data, 4, shuffle=True, whole_batches=whole_batches, seed=0)
    model = SeenBatches()
    quiet_trainer(max_epochs=3, overfit_batches=2).fit(model, train_dataloaders=loader)
    assert model.seen == {epoch: [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]] for epoch in range(3)}


def test_a_debug_run_is_recorded_apart_and_never_counts_in_a_sweep(tmp_path):
    result = run_cli("-m", f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny", "logger=none", "debug=fdr", "seed=1,2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "outputs" / "tiny").exists(), "debug runs stay out of the results"
    (sweep,) = (tmp_path / "outputs" / "debug" / "tiny" / "multirun").iterdir()
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [r["debug"] for r in records] == ["fdr", "fdr"] and all(r["global_step"] == 1 for r in records)
    report = Report(sweep)
    assert [job.status for job in report.jobs] == ["completed, debug=fdr"] * 2 and report.best_job() is None
    summary = (sweep / "summary.md").read_text().splitlines()
    assert "2 jobs, 0 completed" in summary[2] and not any(line.startswith("best ") for line in summary)
