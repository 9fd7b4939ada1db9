"""Inherited no-op per-batch hooks are not dispatched; a callback's own hooks run as before."""

import pytorch_lightning as pl
from pytorch_lightning.demos.boring_classes import BoringModel
from pytorch_lightning.profilers import SimpleProfiler

from stagetune.engine.dispatch import PER_BATCH_HOOKS, SkipInheritedHooks, inherited_hooks


class CountsBatches(pl.Callback):
    def __init__(self) -> None:
        self.ends = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends += 1


class RecordedActions(SimpleProfiler):
    """The profiler Lightning wraps each callback hook call in; it records the action names."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: set[str] = set()

    def start(self, action_name: str) -> None:
        self.actions.add(action_name)
        super().start(action_name)


def fit(callbacks, steps: int = 3) -> RecordedActions:
    profiler = RecordedActions()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        profiler=profiler,
    )
    trainer.fit(BoringModel())
    return profiler


def test_only_the_hooks_a_callback_overrides_are_inherited_ones_skipped():
    assert inherited_hooks(CountsBatches()) == [h for h in PER_BATCH_HOOKS if h != "on_train_batch_end"]
    assert inherited_hooks(pl.Callback()) == list(PER_BATCH_HOOKS)


def test_lightning_skips_the_hidden_hooks_and_still_calls_the_overridden_one():
    counter = CountsBatches()
    actions = fit([counter, SkipInheritedHooks()], steps=3)
    assert counter.ends == 3
    assert "[Callback]CountsBatches.on_train_batch_end" in actions.actions
    called = {a for a in actions.actions if a.startswith("[Callback]CountsBatches.")}
    assert not {f"[Callback]CountsBatches.{h}" for h in PER_BATCH_HOOKS if h != "on_train_batch_end"} & called
    assert "[Callback]CountsBatches.on_train_epoch_end" in called  # other hooks are left alone
    # Lightning itself changing how it dispatches would show here: without the skip, every hook is called
    plain = fit([CountsBatches()], steps=1)
    assert "[Callback]CountsBatches.on_before_backward" in plain.actions


def test_the_hooks_come_back_after_the_fit():
    counter = CountsBatches()
    fit([counter, SkipInheritedHooks()], steps=1)
    assert "on_before_backward" not in vars(counter)
    assert callable(counter.on_before_backward) and callable(counter.on_validation_batch_end)
