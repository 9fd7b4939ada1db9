"""The stage report's confusion matrix counts (row = actual, column = predicted)."""

from __future__ import annotations

import torch

from stagetune.vision.report import StageReport


def test_confusion_matrix_counts_actual_by_predicted():
    report = StageReport()
    report.start_counting(3)
    report.count(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]))
    report.count(torch.tensor([0, 2]), torch.tensor([2, 2]))
    assert report.confusion_matrix().tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    figure = report.confusion_figure(["a", "b", "c"])
    assert [t.get_text() for t in figure.axes[0].texts] == ["1", "1", "0", "0", "1", "0", "1", "0", "2"]
