"""Drawing helpers: figures without pyplot's global state, saved to the run and sent to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from matplotlib.figure import Figure
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger

from stagetune import figures


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure from the one figure helper."""
    return figures.new_figure(width, height, constrained=True)


def to_image(fig: Figure) -> Image.Image:
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")


def save_gif(frames: list[Image.Image], path: Path, frame_ms: int, hold_last_ms: int) -> None:
    """An animated GIF that loops, holding the last frame so the end result can be read."""
    palette = [f.quantize(colors=64, method=Image.Quantize.MEDIANCUT) for f in frames]
    durations = [frame_ms] * (len(frames) - 1) + [hold_last_ms]
    palette[0].save(path, save_all=True, append_images=palette[1:], duration=durations, loop=0, optimize=True)


def run_dir(trainer: pl.Trainer) -> Path:
    path = Path(trainer.default_root_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_figure(trainer: pl.Trainer, tag: str, fig: Figure, step: int) -> None:
    """Send ``fig`` to every TensorBoard logger of the run (no-op without one)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, fig, global_step=step, close=False)
