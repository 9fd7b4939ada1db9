"""A one-hidden-layer ReLU network from matrix multiplies, trained at several widths side by side."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn

from stagetune.curvefit.data import column
from stagetune.curvefit.figures import log_figure, new_figure, run_dir
from stagetune.engine.groups import LayerGroup
from stagetune.engine.plan import StagedModule
from stagetune.errors import ConfigError


class ReluNet(nn.Module):
    """``relu(x @ w1 + b1) @ w2 / sqrt(width) + b2`` for 1-D ``x``: a sum of hinges, piecewise linear.

    Each hidden unit bends the output at ``x = -b1/w1`` (its kink). The kinks start one at random
    in each of ``width`` equal slices of ``[x_min, x_max]``, so every unit starts out useful on the
    interval and even two units can make three pieces. Dividing by ``sqrt(width)`` keeps the size
    of a gradient step on the output the same at every width, so one learning rate suits a net of
    2 units and one of 128.
    """

    def __init__(self, width: int, x_min: float, x_max: float) -> None:
        super().__init__()
        self.width = width
        slope = torch.where(torch.rand(width) < 0.5, -1.0, 1.0) * (0.5 + torch.rand(width))
        kinks = x_min + (x_max - x_min) * (torch.arange(width) + torch.rand(width)) / width
        self.w1 = nn.Parameter(slope.unsqueeze(0))
        self.b1 = nn.Parameter(-slope * kinks)
        self.w2 = nn.Parameter(torch.randn(width, 1))
        self.b2 = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w1 + self.b1) @ self.w2 / math.sqrt(self.width) + self.b2

    def kinks(self) -> torch.Tensor:
        return -self.b1 / self.w1.squeeze(0)


class WidthLadder(StagedModule):
    """One :class:`ReluNet` per hidden width, each its own layer group, trained on the same batches.

    The training loss is the sum of the nets' MSEs; they share no parameter, so each net's
    gradient is that of its own MSE, exactly as if it were trained alone at the same LR.
    Logs ``train|val|test/mse/w{width}`` and attaches :class:`WidthFitPlot` (``universal_approx.png``).
    """

    def __init__(
        self,
        widths: Sequence[int] = (2, 8, 32, 128),
        x_min: float = -math.pi,
        x_max: float = math.pi,
        plot_every_n_epochs: int = 10,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ConfigError("model.widths", widths, "a non-empty list of hidden widths >= 1")
        self.save_hyperparameters()
        self.nets = nn.ModuleList(ReluNet(w, x_min, x_max) for w in widths)
        # Validation and test MSEs as sums and counts, reduced over DDP ranks: every point counted once.
        self.val_mses = nn.ModuleList(torchmetrics.MeanMetric() for _ in widths)
        self.val_loss = torchmetrics.MeanMetric()
        self.test_mses = nn.ModuleList(torchmetrics.MeanMetric() for _ in widths)
        self.test_loss = torchmetrics.MeanMetric()
        self.plot_every_n_epochs = plot_every_n_epochs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions of every width, stacked: ``(n_widths, len(x), 1)``."""
        return torch.stack([net(x) for net in self.nets])

    def layer_groups(self) -> list[LayerGroup]:
        return [LayerGroup(f"width{net.width}", (net,)) for net in self.nets]

    def configure_callbacks(self) -> list[pl.Callback]:
        return [WidthFitPlot(self.plot_every_n_epochs)]

    def _mses(self, batch) -> torch.Tensor:
        """Each width's MSE on the batch; their sum is the loss (each net has its own weights)."""
        x, y = batch
        return ((self(x) - y) ** 2).mean(dim=(1, 2))

    def training_step(self, batch, batch_idx):
        mses = self._mses(batch)
        for net, mse in zip(self.nets, mses):
            self.log(f"train/mse/w{net.width}", mse, batch_size=len(batch[0]))
        return mses.sum()

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val", self.val_mses, self.val_loss)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", self.test_mses, self.test_loss)

    def _evaluate(self, batch, part: str, mse_metrics: nn.ModuleList, loss_metric: torchmetrics.MeanMetric) -> None:
        """Logs ``{part}/mse/w{width}`` and ``{part}/loss`` (their sum), the same for valid and test."""
        n = len(batch[0])
        mses = self._mses(batch)
        for net, metric, mse in zip(self.nets, mse_metrics, mses):
            metric.update(mse, n)
            self.log(f"{part}/mse/w{net.width}", metric, batch_size=n)
        loss_metric.update(mses.sum(), n)
        self.log(f"{part}/loss", loss_metric, prog_bar=part == "val", batch_size=n)


class WidthFitPlot(pl.Callback):
    """Each width's fit over the true curve, with its validation MSE; saved and sent to TensorBoard."""

    def __init__(self, every_n_epochs: int = 10) -> None:
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: WidthLadder) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            log_figure(trainer, "universal_approx/fits", self.draw(trainer, pl_module), trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: WidthLadder) -> None:
        if not trainer.is_global_zero:
            return
        fig = self.draw(trainer, pl_module)
        fig.savefig(run_dir(trainer) / "universal_approx.png")
        log_figure(trainer, "universal_approx/final", fig, trainer.global_step)

    @staticmethod
    def draw(trainer: pl.Trainer, pl_module: WidthLadder):
        data = trainer.datamodule
        x = np.linspace(data.x_val.min(), data.x_val.max(), 400)
        truth = data.curve(x)
        with torch.no_grad():
            preds = pl_module(column(x).to(pl_module.device)).squeeze(-1).cpu().numpy()
        n = len(pl_module.nets)
        cols = math.ceil(n / 2)  # two rows of widths and the MSE panel beside them: readable at a page's width
        fig = new_figure(3.2 * cols + 3.6, 6.0)
        grid = fig.add_gridspec(2, cols + 1, width_ratios=[1] * cols + [1.2])
        axes = [fig.add_subplot(grid[k // cols, k % cols]) for k in range(n)] + [fig.add_subplot(grid[:, cols])]
        mses = []
        for ax, net, pred in zip(axes, pl_module.nets, preds):
            mse = float(np.mean((pred - truth) ** 2))
            mses.append(mse)
            ax.plot(x, truth, "k--", lw=1, label="sin(x)")
            ax.plot(x, pred, color="tab:red", lw=2, label="network")
            kinks = net.kinks().detach().cpu().numpy()
            inside = kinks[(kinks >= x[0]) & (kinks <= x[-1])]
            ax.plot(inside, np.full_like(inside, -1.35), "|", color="tab:blue", ms=8, label="kinks")
            ax.set_ylim(-1.5, 1.5)
            ax.set_title(f"width {net.width}: MSE {mse:.1e}")
            ax.set_xlabel("x")
        axes[0].legend(loc="upper left", fontsize=8)
        widths = [net.width for net in pl_module.nets]
        axes[-1].loglog(widths, mses, "o-", color="tab:red")
        axes[-1].set_xscale("log", base=2)
        axes[-1].set_xlabel("hidden width")
        axes[-1].set_title("MSE against sin(x)")
        fig.suptitle(f"relu(x @ W1 + b1) @ W2 / sqrt(width) + b2 fitting sin(x), step {trainer.global_step}")
        return fig
