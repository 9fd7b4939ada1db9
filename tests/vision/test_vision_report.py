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


def test_confusion_figure_is_readable_counts_contrast_and_short_names_stay_upright():
    from stagetune.figures import text_color
    from stagetune.vision.report import confusion_figure

    matrix = torch.tensor([[30, 2, 0], [1, 25, 4], [0, 0, 3]])
    fig = confusion_figure(matrix, ["5", "6", "7"], "confusion matrix after stage 'unfrozen': valid accuracy 0.892 on 65 images")
    ax = fig.axes[0]
    assert ax.get_title().endswith("valid accuracy 0.892 on 65 images")
    assert all(label.get_rotation() == 0 and label.get_fontsize() >= 10 for label in ax.get_xticklabels())
    image = ax.images[0]
    for text in ax.texts:
        j, i = (round(v) for v in text.get_position())
        assert text.get_fontsize() >= 10
        assert text.get_color() == text_color(image.cmap(image.norm(matrix[i, j])))
    assert {t.get_color() for t in ax.texts} == {"black", "white"}
