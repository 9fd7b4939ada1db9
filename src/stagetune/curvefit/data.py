"""Points on a known 1-D curve, with noise: data whose answer is known exactly."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from stagetune.engine.loaders import epoch_loader, eval_loader
from stagetune.errors import ConfigError

FUNCTIONS = ("affine", "sin")


class CurvePoints(pl.LightningDataModule):
    """Training points ``y = f(x) + noise`` with ``x`` uniform in ``[x_min, x_max]``.

    ``f`` is ``a * x + b`` (``function: affine``) or ``sin(x)`` (``function: sin``). Validation
    points lie on an even grid *without* noise, so ``val/loss`` is the distance from the true curve
    rather than from one noisy draw of it. Test points are noise-free too, at ``n_test`` seeded uniform
    ``x`` rather than the grid: the checkpoint valid chose is scored on points it was not chosen on.
    """

    has_test = True

    def __init__(
        self,
        function: str = "affine",
        a: float = 2.0,
        b: float = 1.0,
        n_train: int = 100,
        n_valid: int = 200,
        n_test: int = 200,
        noise: float = 0.5,
        x_min: float = -2.0,
        x_max: float = 2.0,
        batch_size: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if function not in FUNCTIONS:
            raise ConfigError("data.function", function, "allowed: " + ", ".join(FUNCTIONS))
        if not x_min < x_max:
            raise ConfigError("data.x_max", x_max, f"must be above data.x_min={x_min}")
        for key, value in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test), ("batch_size", batch_size)):
            if value < 1:
                raise ConfigError(f"data.{key}", value, "must be >= 1")
        self.save_hyperparameters()
        rng = np.random.default_rng(seed)
        self.x_train = rng.uniform(x_min, x_max, n_train)
        self.y_train = self.curve(self.x_train) + rng.normal(0.0, noise, n_train)
        self.x_val = np.linspace(x_min, x_max, n_valid)
        self.y_val = self.curve(self.x_val)
        self.x_test = rng.uniform(x_min, x_max, n_test)  # drawn after the training points: those stay as they were
        self.y_test = self.curve(self.x_test)

    def curve(self, x: np.ndarray) -> np.ndarray:
        """The true, noise-free ``f(x)``."""
        h = self.hparams
        return h.a * x + h.b if h.function == "affine" else np.sin(x)

    def model_kwargs(self) -> dict:
        return {}

    def least_squares_line(self) -> tuple[float, float]:
        """The best ``(a, b)`` for the training points: where SGD on the MSE should end up."""
        a, b = np.polyfit(self.x_train, self.y_train, 1)
        return float(a), float(b)

    def summary(self) -> dict:
        h = self.hparams
        out = {"function": h.function, "noise": float(h.noise)}
        if h.function == "affine":
            lsq_a, lsq_b = self.least_squares_line()
            out.update(true_a=float(h.a), true_b=float(h.b), least_squares_a=lsq_a, least_squares_b=lsq_b)
        return out

    @staticmethod
    def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(column(x), column(y))

    def train_dataloader(self) -> DataLoader:
        ds = self._tensors(self.x_train, self.y_train)
        return epoch_loader(ds, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self._tensors(self.x_val, self.y_val), len(self.x_val))

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self._tensors(self.x_test, self.y_test), len(self.x_test))


def column(values: np.ndarray) -> torch.Tensor:
    """A float32 column ``(n, 1)``: one input feature per point."""
    return torch.as_tensor(values, dtype=torch.float32).unsqueeze(1)
