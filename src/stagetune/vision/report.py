"""Pictures of how a classifier is doing, at the end of every stage: in TensorBoard and the run directory.

At the last validation epoch of each stage: the confusion matrix, and a grid of the validation
images the model got most wrong (highest loss) with prediction, truth, loss and probability, as
fastai's ``plot_top_losses``, each titled with the stage and its validation accuracy, under
*Images* and as ``stage-<name>-confusion.png`` / ``stage-<name>-top-losses.png`` in the run
directory. Images are shown un-normalised with the datamodule's ``mean``/``std``.
The confusion matrix is torchmetrics' ``MulticlassConfusionMatrix``: under DDP it counts the whole
validation split (summed over the ranks); the worst predictions are those of rank 0's shard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from torch.nn import functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from stagetune.engine.plan import StagePlan
from stagetune.figures import new_figure, text_color


class StageReport(Callback):
    """Confusion matrix and worst predictions of the validation set, once per stage."""

    def __init__(self, n_worst: int = 9) -> None:
        self.n_worst = n_worst
        self._reset()

    def _reset(self) -> None:
        self.confusion: MulticlassConfusionMatrix | None = None
        self.worst: list[tuple[float, torch.Tensor, int, int, float]] = []

    def start_counting(self, n_classes: int, device: torch.device | str = "cpu") -> None:
        """A fresh confusion matrix of ``n_classes``, on the device the predictions come from."""
        self.confusion = MulticlassConfusionMatrix(n_classes).to(device)

    def count(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add predicted and actual class indices to the confusion matrix."""
        self.confusion.update(preds, targets)

    def _stage_ending(self, trainer: pl.Trainer) -> str | None:
        """The name of the stage whose last epoch this is, else None."""
        if trainer.sanity_checking or not isinstance(trainer.logger, TensorBoardLogger):
            return None
        active = StagePlan.of(trainer).active
        return active.name if trainer.current_epoch == active.last_epoch else None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        if self._stage_ending(trainer) is not None:
            self.start_counting(len(pl_module.class_names), pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs is None or self.confusion is None:
            return
        x, y = batch
        self.count(outputs.detach().argmax(1), y)
        logits = outputs.detach().float().cpu()
        y = y.cpu()
        losses = F.cross_entropy(logits, y, reduction="none")
        probs = logits.softmax(1)
        for k in losses.argsort(descending=True)[: self.n_worst].tolist():
            pred = int(logits[k].argmax())
            self.worst.append((float(losses[k]), x[k].detach().cpu(), pred, int(y[k]), float(probs[k, pred])))
        self.worst = sorted(self.worst, key=lambda w: -w[0])[: self.n_worst]

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stage = self._stage_ending(trainer)
        if stage is None or self.confusion is None:
            return
        if not trainer.is_global_zero:
            self.confusion_matrix()  # every rank takes part in summing the counts; rank 0 draws them
            self._reset()
            return
        names = pl_module.class_names
        matrix = self.confusion_matrix()
        total = int(matrix.sum())
        about = f"after stage '{stage}': valid accuracy {float(matrix.trace()) / max(total, 1):.3f} on {total} images"
        mean = getattr(trainer.datamodule, "mean", None)
        std = getattr(trainer.datamodule, "std", None)
        figures = {
            "confusion_matrix": (confusion_figure(matrix, names, f"confusion matrix {about}"), "confusion"),
            "worst_predictions": (self.worst_figure(names, mean, std, f"top losses {about}\nprediction/actual, loss/probability"), "top-losses"),
        }
        out = Path(trainer.default_root_dir)
        for tag, (fig, stem) in figures.items():
            fig.savefig(out / f"stage-{stage}-{stem}.png", dpi=100)
            trainer.logger.experiment.add_figure(f"{tag}/{stage}", fig, trainer.global_step)
        self._reset()

    def confusion_matrix(self) -> torch.Tensor:
        """Counts: row = true class, column = predicted class (over every DDP rank)."""
        return self.confusion.compute().cpu()

    def confusion_figure(self, names: list[str]) -> Figure:
        return confusion_figure(self.confusion_matrix(), names)

    def worst_figure(self, names: list[str], mean, std, title: str = "prediction/actual, loss/probability") -> Figure:
        worst = [Example(image, pred, true, loss, prob) for loss, image, pred, true, prob in self.worst]
        return top_losses_figure(worst, names, mean, std, title)


@dataclass
class Example:
    """One image as the model saw it (normalised), its predicted and true class, its loss and the prediction's probability."""

    image: torch.Tensor
    pred: int
    true: int
    loss: float = math.nan
    prob: float = math.nan


def examples(dataset, logits: torch.Tensor, targets: torch.Tensor, indices: list[int]) -> list[Example]:
    """The examples at ``indices`` of ``dataset`` (its images as the model saw them), with the model's verdict on each."""
    probs = logits.softmax(1)
    losses = F.cross_entropy(logits, targets, reduction="none")
    out = []
    for k in indices:
        pred = int(logits[k].argmax())
        out.append(Example(dataset[k][0], pred, int(targets[k]), float(losses[k]), float(probs[k, pred])))
    return out


def confusion_figure(matrix: torch.Tensor, names: list[str], title: str = "confusion matrix") -> Figure:
    """Counts with row = true class, column = predicted class; the count in each cell up to 20 classes.

    Counts are black on light cells and white on dark ones; short class names stay upright.
    """
    n = len(names)
    matrix = np.asarray(matrix)
    side = max(4.5, 1.5 + 0.55 * n)
    fig = new_figure(side, side)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n))
    ax.set_xlabel("predicted", fontsize=10)
    ax.set_ylabel("actual", fontsize=10)
    ax.set_title(title, fontsize=10, wrap=True)
    short = all(len(str(name)) <= 3 for name in names)
    ax.set_xticklabels(names, rotation=0 if short else 45, ha="center" if short else "right", fontsize=10 if n <= 20 else 7)
    ax.set_yticklabels(names, fontsize=10 if n <= 20 else 7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                color = text_color(image.cmap(image.norm(matrix[i, j])))
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=10, color=color)
    fig.tight_layout()
    return fig


def shown(image: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised CHW tensor as the HWC picture it was made from (``mean``/``std`` undone, clipped to [0, 1])."""
    if mean is not None and std is not None:
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def image_grid(examples: list[Example], caption: Callable[[Example], str], mean, std, title: str, color: Callable[[Example], str] | None = None) -> Figure:
    """Images in a square-ish grid, each with its caption above it (two short lines at most), 2.2 x 2.4 inches a cell."""
    cols = max(1, math.ceil(len(examples) ** 0.5))
    rows = max(1, -(-len(examples) // cols))
    fig = new_figure(2.2 * cols, 2.4 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, example in zip(axes.flat, examples):
        ax.imshow(shown(example.image, mean, std), interpolation="nearest")
        ax.set_title(caption(example), fontsize=8, color=color(example) if color else "black")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def top_losses_figure(examples: list[Example], names: list[str], mean, std, title: str = "prediction/actual, loss/probability") -> Figure:
    """fastai's ``plot_top_losses``: the given examples with prediction/actual and loss/probability."""
    return image_grid(examples, lambda e: f"{names[e.pred]}/{names[e.true]}\n{e.loss:.2f}/{e.prob:.2f}", mean, std, title)


def batch_figure(examples: list[Example], names: list[str], mean, std) -> Figure:
    """fastai's ``show_batch``: training inputs after their transforms, each with its label."""
    return image_grid(examples, lambda e: names[e.true], mean, std, "a training batch, as the model sees it (label)")


def results_figure(examples: list[Example], names: list[str], mean, std) -> Figure:
    """fastai's ``show_results``: prediction against truth with the loss; green when right, red when wrong."""
    return image_grid(
        examples,
        lambda e: f"{names[e.pred]}/{names[e.true]}\n{e.loss:.2f}",
        mean,
        std,
        "prediction/actual, loss (green: right, red: wrong)",
        color=lambda e: "#1a7f37" if e.pred == e.true else "#c62828",
    )


def most_confused(matrix: torch.Tensor, names: list[str], min_count: int = 1) -> list[tuple[str, str, int]]:
    """fastai's ``most_confused``: (actual, predicted, count) off the diagonal, most frequent first."""
    pairs = [(names[i], names[j], int(matrix[i, j])) for i in range(len(names)) for j in range(len(names)) if i != j and int(matrix[i, j]) >= min_count]
    return sorted(pairs, key=lambda p: -p[2])


def most_confused_figure(pairs: list[tuple[str, str, int]]) -> Figure:
    """The confused pairs as horizontal bars, the most frequent on top, each labelled with its count."""
    fig = new_figure(6, 1 + 0.35 * max(1, len(pairs)))
    ax = fig.subplots()
    labels = [f"{actual} \u2192 {pred}" for actual, pred, _ in pairs]
    counts = [count for _, _, count in pairs]
    ax.barh(range(len(pairs)), counts, color="C0")
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.invert_yaxis()
    for k, count in enumerate(counts):
        ax.text(count, k, f" {count}", va="center", fontsize=8, color="black")
    ax.set_xlim(0, max(counts, default=1) * 1.15)
    ax.set_xlabel("examples (actual \u2192 predicted)")
    ax.set_title("most confused classes" if pairs else "most confused classes: none confused")
    fig.tight_layout()
    return fig
