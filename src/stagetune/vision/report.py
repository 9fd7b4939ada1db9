"""Pictures of how a classifier is doing, written to TensorBoard at the end of every stage.

At the last validation epoch of each stage: the confusion matrix, and a grid of the validation
images the model got most wrong (highest loss) with prediction, truth, loss and probability, as
fastai's ``plot_top_losses``. Images are shown un-normalised with the datamodule's ``mean``/``std``.
The confusion matrix is torchmetrics' ``MulticlassConfusionMatrix``: under DDP it counts the whole
validation split (summed over the ranks); the worst predictions are those of rank 0's shard.
"""

from __future__ import annotations

from matplotlib.figure import Figure  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torchmetrics.classification import MulticlassConfusionMatrix  # noqa: E402

from stagetune.engine.plan import StagePlan  # noqa: E402
from stagetune.figures import new_figure  # noqa: E402


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
        plan = StagePlan.of(trainer)
        last_epoch = plan.plan.first_epoch(plan.index) + plan.stage.epochs - 1
        return plan.stage.name if trainer.current_epoch == last_epoch else None

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
        writer = trainer.logger.experiment
        step = trainer.global_step
        writer.add_figure(f"confusion_matrix/{stage}", self.confusion_figure(names), step)
        mean = getattr(trainer.datamodule, "mean", None)
        std = getattr(trainer.datamodule, "std", None)
        writer.add_figure(f"worst_predictions/{stage}", self.worst_figure(names, mean, std), step)
        self._reset()

    def confusion_matrix(self) -> torch.Tensor:
        """Counts: row = true class, column = predicted class (over every DDP rank)."""
        return self.confusion.compute().cpu()

    def confusion_figure(self, names: list[str]) -> Figure:
        matrix = self.confusion_matrix()
        n = len(names)
        fig = new_figure(2 + 0.4 * n, 2 + 0.4 * n)
        ax = fig.subplots()
        ax.imshow(matrix, cmap="Blues")
        ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="actual", title="confusion matrix")
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        if n <= 20:
            dark = float(matrix.max()) / 2
            for i in range(n):
                for j in range(n):
                    count = int(matrix[i, j])
                    ax.text(j, i, count, ha="center", va="center", fontsize=7, color="white" if count > dark else "black")
        fig.tight_layout()
        return fig

    def worst_figure(self, names: list[str], mean, std) -> Figure:
        cols = max(1, int(len(self.worst) ** 0.5 + 0.999))
        rows = max(1, -(-len(self.worst) // cols))
        fig = new_figure(2.2 * cols, 2.4 * rows)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (loss, image, pred, true, prob) in zip(axes.flat, self.worst):
            if mean is not None and std is not None:
                image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
            ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_title(f"{names[pred]}/{names[true]}\n{loss:.2f}/{prob:.2f}", fontsize=8)
        fig.suptitle("prediction/actual, loss/probability", fontsize=9)
        fig.tight_layout()
        return fig
