"""Fitting ``y = a*x + b`` by gradient descent, and a film of the line finding the points."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn

from stagetune.curvefit.figures import log_figure, new_figure, run_dir, save_gif, to_image
from stagetune.engine.groups import LayerGroup
from stagetune.engine.plan import StagedModule


class Affine(nn.Module):
    """``a * x + b`` with two scalar parameters: the smallest model gradient descent can fit."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x + self.b


class LineFit(StagedModule):
    """An affine function fitted to points by MSE, started from a deliberately wrong line.

    Logs ``fit/a`` and ``fit/b`` every validation, ``test/loss`` on the test points, and attaches :class:`LineFilm` so the run
    directory receives ``sgd_line.gif`` and ``sgd_line.png``.
    """

    def __init__(self, init_a: float = -1.0, init_b: float = -2.0, frames: int = 60) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.line = Affine(init_a, init_b)
        self.frames = frames
        self.val_loss = torchmetrics.MeanMetric()  # summed over DDP ranks: every point counted once
        self.test_loss = torchmetrics.MeanMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.line(x)

    def layer_groups(self) -> list[LayerGroup]:
        return [LayerGroup("line", (self.line,))]

    def configure_callbacks(self) -> list[pl.Callback]:
        return [LineFilm(self.frames)]

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_loss.update(nn.functional.mse_loss(self(x), y), len(x))
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=len(x))
        self.log("fit/a", self.line.a, batch_size=len(x))
        self.log("fit/b", self.line.b, batch_size=len(x))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_loss.update(nn.functional.mse_loss(self(x), y), len(x))
        self.log("test/loss", self.test_loss, batch_size=len(x))


class LineFilm(pl.Callback):
    """Records ``(a, b, loss)`` at every step; at the end draws the GIF, the PNG and TensorBoard images.

    The GIF's frames are spaced geometrically in steps, so the fast early moves and the slow
    settling both show. TensorBoard gets the same picture at a handful of steps (its image slider
    replays the fit) and the final one.
    """

    def __init__(self, frames: int = 60, tensorboard_snapshots: int = 8) -> None:
        self.frames = frames
        self.tensorboard_snapshots = tensorboard_snapshots
        self.history: list[tuple[int, float, float, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: LineFit) -> None:
        self.history = []
        self._record(trainer, pl_module, float("nan"))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: LineFit, outputs, batch, batch_idx: int) -> None:
        self._record(trainer, pl_module, float(outputs["loss"]))

    def _record(self, trainer: pl.Trainer, pl_module: LineFit, loss: float) -> None:
        line = pl_module.line
        self.history.append((trainer.global_step, line.a.item(), line.b.item(), loss))

    def on_train_end(self, trainer: pl.Trainer, pl_module: LineFit) -> None:
        if not trainer.is_global_zero or len(self.history) < 2:
            return
        data = trainer.datamodule
        film = Film(data.x_train, data.y_train, data.curve, np.array(self.history))
        out = run_dir(trainer)
        last = len(self.history) - 1
        for k in frame_indices(last, self.tensorboard_snapshots):
            log_figure(trainer, "sgd_line/steps", film.show(k), int(film.history[k, 0]))
        images = [to_image(film.show(k)) for k in frame_indices(last, self.frames)]
        save_gif(images, out / "sgd_line.gif", frame_ms=80, hold_last_ms=1500)
        final = film.show(last, trail=True)
        final.savefig(out / "sgd_line.png")
        log_figure(trainer, "sgd_line/final", final, trainer.global_step)


def frame_indices(last: int, n: int) -> list[int]:
    """About ``n`` indices from 0 to ``last``, spaced geometrically (dense at the start)."""
    spaced = np.geomspace(1, last + 1, max(2, n)) - 1
    return sorted(set(np.round(spaced).astype(int).tolist()) | {0, last})


class Film:
    """The fit at any recorded step: the points and the line, beside the loss curve so far.

    One figure is laid out once and its artists updated per frame: redrawing a fresh figure per
    frame costs ten times more.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, curve, history: np.ndarray) -> None:
        self.history = history
        self.grid = np.linspace(x.min(), x.max(), 2)
        self.fig = new_figure(9.0, 3.6)
        points, losses = self.fig.subplots(1, 2, width_ratios=[1.3, 1])
        points.scatter(x, y, s=12, color="0.55", label="noisy points")
        points.plot(self.grid, curve(self.grid), "k--", lw=1, label="true line")
        self.trail = [points.plot([], [], color="tab:blue", alpha=0.2, lw=1)[0] for _ in range(12)]
        (self.line,) = points.plot([], [], color="tab:red", lw=2.5, label="fit")
        pad = 0.15 * (y.max() - y.min())
        points.set_ylim(y.min() - pad, y.max() + pad)
        points.set_xlabel("x")
        points.set_ylabel("y")
        self.legend_axes = points
        self.title = points.set_title(" ")
        steps, seen = history[1:, 0], history[1:, 3]
        losses.plot(steps, seen, color="0.8", lw=1)
        (self.loss_so_far,) = losses.plot([], [], color="tab:red", lw=1.5)
        losses.set_yscale("log")
        losses.set_xlabel("step")
        losses.set_title("training loss (MSE of a batch)")
        self.fig.canvas.draw()
        self.fig.set_layout_engine("none")

    def show(self, k: int, trail: bool = False):
        step, a, b, _ = self.history[k]
        self.line.set_data(self.grid, a * self.grid + b)
        self.line.set_label(f"fit: y = {a:.2f}x {'-' if b < 0 else '+'} {abs(b):.2f}")
        self.legend_axes.legend(loc="upper left", fontsize=8)
        earlier = frame_indices(k, len(self.trail))[:-1] if trail else []
        for artist, k_old in zip(self.trail, earlier + [None] * len(self.trail)):
            if k_old is None:
                artist.set_data([], [])
            else:
                _, a_old, b_old, _ = self.history[k_old]
                artist.set_data(self.grid, a_old * self.grid + b_old)
        self.title.set_text(f"step {int(step)}")
        self.loss_so_far.set_data(self.history[1 : k + 1, 0], self.history[1 : k + 1, 3])
        return self.fig
