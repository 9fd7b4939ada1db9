"""Faults during training: divergence, interruption, and checkpoints that are never half-written.

* :class:`DivergenceGuard` stops at the first non-finite loss, before it reaches the weights, with
  one message naming the stage, epoch, step and learning rates in force, and the last good
  checkpoint.
* :class:`Interruption` turns SIGINT/SIGTERM into a clean stop at the end of the current step: a
  checkpoint (``last.ckpt``) that ``resume=RUN_DIR`` continues from, and the run marked
  ``interrupted``.
* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file and renames it into place,
  so a kill during a save leaves the previous good file; :func:`check_checkpoint` turns a
  truncated, foreign or code-carrying file into one clear error naming it.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback

from stagetune.engine.plan import StagePlan
from stagetune.errors import StagetuneError


class Diverged(StagetuneError):
    """The loss became NaN or infinite."""

    status = "diverged"


class Interrupted(StagetuneError):
    """SIGINT or SIGTERM stopped the run; it can be resumed."""

    status = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def _stage_name(trainer: pl.Trainer) -> str:
    return StagePlan.of(trainer).stage.name


def _last_checkpoint(trainer: pl.Trainer) -> Path | None:
    cb = trainer.checkpoint_callback
    last = getattr(cb, "last_model_path", "") if cb else ""
    return Path(last) if last and Path(last).exists() else None


class DivergenceGuard(Callback):
    """Raises :class:`Diverged` at the first non-finite training loss, before the backward pass."""

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if torch.isfinite(loss).all():
            return
        lrs = ", ".join(f"{g['name']}={g['lr']:.3g}" for g in trainer.optimizers[0].param_groups)
        last = _last_checkpoint(trainer)
        kept = f"last good checkpoint: {last}" if last else "no checkpoint was saved before this step"
        raise Diverged(
            f"loss became {float(loss.detach().float().mean())} in stage {_stage_name(trainer)!r}, "
            f"epoch {trainer.current_epoch}, step {trainer.global_step} (lr {lrs}); {kept}. "
            "Hint: lower plan.lr (stagetune-lr-find suggests one), add weight decay or gradient "
            "clipping (trainer.gradient_clip_val)"
        )


class Interruption(Callback):
    """SIGINT/SIGTERM: finish the step, save ``last.ckpt``, raise :class:`Interrupted`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.received is None:
            return
        signum, self.received = self.received, None
        where = f"{signal.Signals(signum).name} received at stage {_stage_name(trainer)!r}, epoch {trainer.current_epoch}, step {trainer.global_step}"
        cb = trainer.checkpoint_callback
        if cb is None:
            raise Interrupted(f"{where}; this Trainer keeps no checkpoints, so there is nothing to resume", signum)
        path = Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        raise Interrupted(
            f"{where}; checkpoint saved to {path}. "
            f"Continue with: stagetune resume={Path(trainer.default_root_dir).resolve()}",
            signum,
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same directory, then renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def check_checkpoint(path: str | Path, what: str) -> dict:
    """Load a checkpoint with ``weights_only=True`` or fail with one line naming the file.

    ``what`` says how the file was given (``resume``, ``ckpt_path``, ``model.weights``).
    """
    path = Path(path)
    if not path.is_file():
        raise StagetuneError(f"{what}: {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it holds pickled code, which stagetune refuses to run (weights_only=True)"
        raise StagetuneError(f"{what}: {path} is not a readable checkpoint ({reason})") from None
    if not isinstance(data, dict):
        raise StagetuneError(f"{what}: {path} holds a {type(data).__name__}, not a checkpoint or state dict")
    return data
