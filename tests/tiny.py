"""A tiny three-group network and random data: small enough to train in a test, through the CLI too.

``tests/conf`` holds the configs that select them (add ``hydra.searchpath=[file://tests/conf]``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stagetune.engine.groups import LayerGroup
from stagetune.engine.loaders import epoch_loader, eval_loader
from stagetune.engine.plan import StagedModule


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A Trainer for tests: no logger, checkpoints, bar, summary or validation unless asked for."""
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    return pl.Trainer(**{**quiet, **kwargs})


class TinyNet(StagedModule):
    """Three layer groups (body_early with BatchNorm, body_late, head), a classification loss."""

    def __init__(self, n_in: int = 6, n_classes: int = 3, batchnorm: bool = True, dropout: float = 0.0, nan_at_step: int = -1) -> None:
        super().__init__()
        self.nan_at_step = nan_at_step
        norm = nn.BatchNorm1d(8) if batchnorm else nn.Identity()
        self.early = nn.Sequential(nn.Linear(n_in, 8), norm, nn.ReLU(), nn.Dropout(dropout))
        self.late = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.head(self.late(self.early(x)))

    def layer_groups(self):
        return [LayerGroup("body_early", (self.early,)), LayerGroup("body_late", (self.late,)), LayerGroup("head", (self.head,))]

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        if self.global_step == self.nan_at_step:
            loss = loss * float("nan")
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)


class UngroupedNet(StagedModule):
    """A model stagetune knows nothing about (no ``layer_groups()``), named as a ResNet is: for ``model.groups`` patterns.

    ``scale`` sits on the model itself beside its children, as ViT's ``class_token`` does.
    """

    def __init__(self, n_in: int = 6, n_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Linear(n_in, 8)
        self.bn1 = nn.BatchNorm1d(8)
        self.layer1 = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.scale = nn.Parameter(torch.ones(8))
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc(self.layer3(self.layer1(self.bn1(self.conv1(x)))) * self.scale)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)


class TinyData(pl.LightningDataModule):
    def __init__(self, n: int = 64, n_in: int = 6, n_classes: int = 3, batch_size: int = 8, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, n_in, generator=g)
        self.y = torch.randint(0, n_classes, (n,), generator=g)
        self.batch_size, self.shuffle = batch_size, shuffle

    def model_kwargs(self) -> dict:
        return {}

    def train_dataloader(self):
        return epoch_loader(TensorDataset(self.x, self.y), self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self):
        return eval_loader(TensorDataset(self.x, self.y), self.batch_size)


class StateDump(pl.Callback):
    """Saves every rank's parameters and buffers at each epoch end: ``rank{r}-epoch{e}.pt``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_epoch_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.out / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.pt")


class SignalAt(pl.Callback):
    """Sends this process a signal (SIGTERM by default) at a global step, once; only rank ``rank`` when given."""

    def __init__(self, step: int, marker: str, signum: int = signal.SIGTERM, rank: int | None = None) -> None:
        self.step, self.marker, self.signum, self.rank = step, Path(marker), signum, rank

    def _signal(self, trainer) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text("signalled")
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._signal(trainer)


class SignalInValidation(SignalAt):
    """As :class:`SignalAt`, at validation batch ``batch`` of the fit (after ``step`` steps), or of the evaluation after it."""

    def __init__(self, step: int, marker: str, batch: int = 1, after_fit: bool = False) -> None:
        super().__init__(step, marker)
        self.batch, self.after_fit = batch, after_fit

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pass

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.batch and not trainer.sanity_checking and trainer.state.fn == ("validate" if self.after_fit else "fit"):
            self._signal(trainer)


class KillAt(pl.Callback):
    """SIGKILLs the process at a global step, once (a marker file remembers it happened)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)


class HoldAt(pl.Callback):
    """Holds the run at a global step (writing ``marker``) until the file ``release`` exists: a live run to test against."""

    def __init__(self, step: int, marker: str, release: str, timeout_s: float = 120) -> None:
        self.step, self.marker, self.release, self.timeout_s = step, Path(marker), Path(release), timeout_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        self.marker.write_text("holding")
        deadline = time.monotonic() + self.timeout_s
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class OptimizerDump(pl.Callback):
    """Writes every rank's optimizer param groups (lr, weight decay) at each epoch end: ``rank{r}-epoch{e}.json``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_epoch_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        groups = [{"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in trainer.optimizers[0].param_groups]
        (self.out / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.json").write_text(json.dumps(groups))


class RaiseAt(pl.Callback):
    """Raises a RuntimeError at a global step: a fault no check foresees (a bug in a model or callback)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"fault injected at step {self.step}")


class SignalInSetup(pl.Callback):
    """Ctrl-C while the Trainer sets up, before training starts: the KeyboardInterrupt that Python's
    SIGINT handler raises in the main thread (raised here, so it does not hang on signal delivery)."""

    def setup(self, trainer, pl_module, stage):
        raise KeyboardInterrupt


class SigtermInTrainerSetup(pl.Callback):
    """SIGTERM while the Trainer sets up (strategy, DDP, a resume's checkpoint load): before Lightning installs its handlers."""

    def setup(self, trainer, pl_module, stage):
        if stage == "fit":
            os.kill(os.getpid(), signal.SIGTERM)


class SignalOnBuild(pl.Callback):
    """Sends this process ``signum`` as the run builds its callbacks: before any Trainer exists."""

    def __init__(self, signum: str = "SIGTERM") -> None:
        os.kill(os.getpid(), getattr(signal, signum))
        time.sleep(1)  # the signal is delivered here


class HoldUntilSignalled(pl.Callback):
    """Holds the run at a global step (writing ``marker``) until stagetune's signal handler has a signal: a
    run to interrupt at a known step from outside (a scheduler's SIGTERM), however late the signal arrives."""

    def __init__(self, step: int, marker: str, timeout_s: float = 120) -> None:
        self.step, self.marker, self.timeout_s = step, Path(marker), timeout_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from stagetune.engine.faults import Interruption

        interruption = Interruption.of(trainer)
        if trainer.global_step != self.step or interruption is None:
            return
        self.marker.write_text("holding")
        deadline = time.monotonic() + self.timeout_s
        while interruption.received is None and time.monotonic() < deadline:
            time.sleep(0.05)
