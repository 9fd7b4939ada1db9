"""Faults during training: divergence, interruption, and checkpoints that are never half-written.

* :class:`DivergenceGuard` stops at the first non-finite loss, before it reaches the weights, with
  one message naming the stage, epoch, step and learning rates in force, and the last good
  checkpoint.
* :class:`LatestCheckpoint` keeps ``last.ckpt`` the latest state: written at every epoch end (with
  or without validation) and at an interruption.
* :class:`Interruption` turns SIGINT/SIGTERM/SIGUSR1 (a scheduler's preemption signal) into a clean
  stop within one batch, in training, validation or test: ``last.ckpt`` that ``resume=RUN_DIR``
  continues from exactly, and the run marked ``interrupted``. DDP ranks agree on the step: the
  signal number is all-reduced at each batch end, so one rank's signal stops them all together.
* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file and renames it into place,
  so a kill during a save leaves the previous good file (and a temporary that the next start
  removes); :func:`check_checkpoint` turns a truncated, foreign or code-carrying file into one
  clear error naming it.
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, Checkpoint
from pytorch_lightning.trainer.states import TrainerFn

from stagetune.engine.plan import StagePlan
from stagetune.errors import Diverged, Interrupted, StagetuneError


def _stage_name(trainer: pl.Trainer) -> str:
    return StagePlan.of(trainer).active.name


def _last_checkpoint(trainer: pl.Trainer) -> Path | None:
    latest = LatestCheckpoint.of(trainer)
    return latest.path if latest is not None and latest.path.exists() else None


def finite(loss: torch.Tensor) -> bool:
    """Whether every value of ``loss`` is finite; a one-value loss is read directly (0.2 us on a CPU
    against 7 for ``isfinite().all()``; the same one device sync on a GPU)."""
    if loss.numel() == 1:
        return math.isfinite(loss.item())
    return bool(torch.isfinite(loss).all())


class DivergenceGuard(Callback):
    """Raises :class:`Diverged` at the first non-finite training loss, before the backward pass."""

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if finite(loss):
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


def rewind_validation(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint written during the fit's validation resume by running that validation again, whole.

    Lightning 2.6 resumes a checkpoint written at a validation batch by skipping the rest of that
    validation (its metrics, the best checkpoint and the epoch's end hooks would be lost). Marked as
    stopped inside the first validation step, it runs the whole validation, then the epoch's end.
    This is the one place stagetune writes Lightning's private loop state; ``tests/test_faults.py``
    checks the layout it expects.
    """
    at_first_step = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    loop = checkpoint["loops"]["fit_loop"]
    loop["epoch_loop.val_loop.batch_progress"] = {"total": dict(at_first_step), "current": dict(at_first_step), "is_last_batch": False}


class LatestCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` at every epoch end, after the other checkpoint callbacks, and when asked to (an interruption).

    Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only in epochs where the
    monitored metric improves, and never when validation is off. At the start of a fit it removes
    temporary files a killed checkpoint write left in its directory.
    """

    NAME = "last.ckpt"

    def __init__(self, dirpath: str | Path) -> None:
        self.dirpath = Path(dirpath)
        self._rewind = False

    @property
    def path(self) -> Path:
        return self.dirpath / self.NAME

    @staticmethod
    def of(trainer: pl.Trainer) -> LatestCheckpoint | None:
        """The Trainer's LatestCheckpoint; None for a Trainer that keeps no checkpoints (the LR finder)."""
        return next((c for c in trainer.checkpoint_callbacks if isinstance(c, LatestCheckpoint)), None)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            AtomicCheckpointIO.remove_stale(self.dirpath)

    def save(self, trainer: pl.Trainer, *, in_validation: bool = False) -> Path:
        """Write ``last.ckpt`` now (every rank calls this); ``in_validation`` resumes by redoing the epoch's validation."""
        self._rewind = in_validation
        try:
            trainer.save_checkpoint(self.path)
        finally:
            self._rewind = False
        return self.path

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._rewind:
            rewind_validation(checkpoint)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)
        interruption = Interruption.of(trainer)
        if interruption is not None and (signum := interruption.requested(trainer)):
            interruption.stop(trainer, signum, self.path)


class Interruption(Callback):
    """SIGINT/SIGTERM/SIGUSR1: finish the batch, save ``last.ckpt``, raise :class:`Interrupted`.

    A signal at the epoch's last training batch is acted on at the first validation batch, or at the
    epoch end when no validation follows: a checkpoint written between the last batch and the
    epoch's end hooks would resume past those hooks. A signal during the evaluation after the fit
    (validation and test of the chosen checkpoint) stops it; ``last.ckpt`` already holds the
    finished training, and resuming evaluates again.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._seen, self._common = 0, 0.0  # evaluation batches done, and how many every rank has

    @staticmethod
    def of(trainer: pl.Trainer) -> Interruption | None:
        return next((c for c in trainer.callbacks if isinstance(c, Interruption)), None)

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    def _install(self) -> None:
        """Take the signals over from Lightning's handlers, which it installs just before the loops run.

        Lightning's SIGTERM handler broadcasts from inside the handler under DDP, which breaks the
        collective a rank is in when the signal reaches only that rank; this one only sets a flag.
        """
        for sig in self.SIGNALS:
            if signal.getsignal(sig) != self._handle:
                self._previous.setdefault(sig, signal.signal(sig, self._handle))

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self, trainer: pl.Trainer) -> int:
        """The signal any rank received (0: none); every rank calls this at the same batch, so all agree."""
        signum = self.received or (signal.SIGTERM if trainer.received_sigterm else 0)  # Lightning's handler, before ours took over
        if trainer.world_size > 1:
            signum = int(trainer.strategy.reduce(torch.tensor(signum, device=trainer.strategy.root_device), reduce_op="max"))
        return signum

    def stop(self, trainer: pl.Trainer, signum: int, saved: Path | None, during: str = "") -> NoReturn:
        """Raise :class:`Interrupted`, saying where and how to continue."""
        self.received = None
        where = f"{signal.Signals(signum).name} received at stage {_stage_name(trainer)!r}, epoch {trainer.current_epoch}, step {trainer.global_step}{during}"
        if saved is None:
            raise Interrupted(f"{where}; this Trainer keeps no checkpoints, so there is nothing to resume", signum)
        raise Interrupted(f"{where}; checkpoint saved to {saved}. Continue with: stagetune resume={Path(trainer.default_root_dir).resolve()}", signum)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        signum = self.requested(trainer)
        if not signum:
            return
        latest = LatestCheckpoint.of(trainer)
        if latest is None:
            self.stop(trainer, signum, None)
        if batch_idx + 1 < trainer.num_training_batches:
            self.stop(trainer, signum, latest.save(trainer))
        # the epoch's last batch: acted on at the next validation batch or by LatestCheckpoint at the epoch end

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()
        if not trainer.sanity_checking:  # a signal during the sanity check is acted on at the first training batch
            self._start_evaluation(trainer, trainer.num_val_batches)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()
        self._start_evaluation(trainer, trainer.num_test_batches)

    def _start_evaluation(self, trainer: pl.Trainer, batches: list[int | float]) -> None:
        """Count the batches every rank has: evaluation shards differ by one example, so their batch counts may too."""
        self._seen, self._common = 0, sum(batches)
        if trainer.world_size > 1:
            self._common = float(trainer.strategy.reduce(torch.tensor(float(self._common), device=trainer.strategy.root_device), reduce_op="min"))

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._evaluation_batch(trainer, "validation")

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_batch(trainer, "test")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._in_evaluation(trainer, "validation")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._in_evaluation(trainer, "test")

    def _evaluation_batch(self, trainer: pl.Trainer, split: str) -> None:
        self._seen += 1
        if self._seen <= self._common:  # a rank's extra last batch checks nothing: the others would not answer; the loop's end does
            self._in_evaluation(trainer, split)

    def _in_evaluation(self, trainer: pl.Trainer, split: str) -> None:
        signum = self.requested(trainer)
        if not signum:
            return
        latest = LatestCheckpoint.of(trainer)
        if latest is None:
            self.stop(trainer, signum, None, f" during {split}")
        if trainer.state.fn == TrainerFn.FITTING:
            self.stop(trainer, signum, latest.save(trainer, in_validation=True), f" during {split}")
        saved = latest.path if latest.path.exists() else None
        self.stop(trainer, signum, saved, f" during the {split} of the chosen checkpoint, after training finished")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same directory, then renamed into place."""

    @staticmethod
    def remove_stale(directory: Path) -> list[Path]:
        """Delete the temporaries a write killed part-way left in ``directory`` (SIGKILL runs no cleanup); those removed."""
        stale = sorted(directory.glob(".*.ckpt.*.tmp")) if directory.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

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
