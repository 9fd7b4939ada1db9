"""The source model of the offline transfer experiment: trained once, reused, rebuilt on change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from stagetune.vision.models import ResNet34Classifier
from stagetune.vision.source import source_weights

TINY = {"classes": [0, 1], "size": 8, "train_per_class": 2, "epochs": 1, "batch_size": 16}


def test_source_is_saved_reused_and_rebuilt_when_its_settings_change(tmp_path, caplog, monkeypatch):
    cache = str(tmp_path / "sources")
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with caplog.at_level("INFO", logger="stagetune"):
        first = source_weights(**TINY, cache_dir=cache)
    assert torch.equal(torch.rand(3), expected_next), "making the source leaves the run's random state alone"
    assert os.environ["PL_GLOBAL_SEED"] == "42", "and the run's seed, which orders its data"
    path = Path(first)
    assert path.parent == tmp_path / "sources" and path.suffix == ".pth"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["classes"] == [0, 1] and record["epochs"] == 1 and 0 <= record["val_acc"] <= 1
    stamp = path.stat().st_mtime_ns

    caplog.clear()
    with caplog.at_level("INFO", logger="stagetune"):
        again = source_weights(**TINY, cache_dir=cache)
    assert again == first and path.stat().st_mtime_ns == stamp
    assert f"source model: reusing {first}" in caplog.text

    changed = source_weights(**{**TINY, "classes": [0, 2]}, cache_dir=cache)
    assert changed != first and len(list((tmp_path / "sources").glob("*.pth"))) == 2

    target = ResNet34Classifier(n_classes=5, weights=first)
    saved = torch.load(first, weights_only=True)
    assert torch.equal(target.body.layer1[0].conv1.weight, saved["body.layer1.0.conv1.weight"])
