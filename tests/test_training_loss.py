"""The engine logs the training loss: every n steps as ``train/loss_step``, the epoch mean as ``train/loss``."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.data import extract_batch_size

from stagetune.engine.plan import StagePlan
from stagetune.engine.training_loss import TrainingLoss, batch_size
from tests.helpers.plans import make_plan
from tests.tiny import TinyData, TinyNet, quiet_trainer


class MemoryLogger(Logger):
    """Keeps every (step, name, value) it is given."""

    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.rows.extend((step, k, float(v)) for k, v in metrics.items())

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class Losses(pl.Callback):
    """The loss of every batch, recomputed independently: the model's loss before its step."""

    def __init__(self):
        self.by_epoch = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(pl_module(x), y)
        self.by_epoch.setdefault(trainer.current_epoch, []).append((float(loss), len(y)))


def fit(tmp_path, n=60, batch_size=8, every=3, accumulate=1):
    pl.seed_everything(0)
    model, data = TinyNet(dropout=0.0, batchnorm=False), TinyData(n=n, batch_size=batch_size)
    logger, losses = MemoryLogger(), Losses()
    trainer = quiet_trainer(
        max_epochs=4,
        callbacks=[StagePlan(make_plan(train_bn=True)), losses, TrainingLoss()],
        logger=logger,
        log_every_n_steps=every,
        accumulate_grad_batches=accumulate,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    return trainer, logger, losses


def test_epoch_mean_is_the_batch_size_weighted_mean_of_the_epochs_losses(tmp_path):
    # 60 examples in batches of 8: the last batch has 4, so weighting matters
    trainer, logger, losses = fit(tmp_path)
    epoch_rows = [v for _, k, v in logger.rows if k == "train/loss"]
    assert len(epoch_rows) == 4
    for logged, batches in zip(epoch_rows, (losses.by_epoch[e] for e in range(4))):
        expected = sum(loss * n for loss, n in batches) / sum(n for _, n in batches)
        assert logged == pytest.approx(expected, rel=1e-5)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(epoch_rows[-1], rel=1e-6)


def test_step_loss_goes_to_the_loggers_every_n_steps(tmp_path):
    trainer, logger, losses = fit(tmp_path, every=3)
    steps = [s for s, k, _ in logger.rows if k == "train/loss_step"]
    assert steps == list(range(0, trainer.global_step, 3)), "the steps the LRs are logged at"
    batch_losses = [loss for epoch in sorted(losses.by_epoch) for loss, _ in losses.by_epoch[epoch]]
    logged = {s: v for s, k, v in logger.rows if k == "train/loss_step"}
    for step, value in logged.items():
        assert value == pytest.approx(batch_losses[step], rel=1e-5), step


def test_accumulated_steps_report_the_loss_not_its_fraction(tmp_path):
    trainer, logger, losses = fit(tmp_path, n=64, every=1, accumulate=2)
    epoch = [v for _, k, v in logger.rows if k == "train/loss"][0]
    batches = losses.by_epoch[0]
    assert epoch == pytest.approx(sum(loss for loss, _ in batches) / len(batches), rel=1e-5)


@pytest.mark.parametrize(
    "batch, n",
    [
        ((torch.zeros(5, 3), torch.zeros(5)), 5),
        ([torch.zeros(7)], 7),
        (torch.zeros(4, 2), 4),
        ({"x": torch.zeros(6, 2), "y": torch.zeros(6)}, 6),
        ((torch.tensor(1.0), torch.zeros(3)), 1),
    ],
)
def test_the_batch_size_is_lightnings_for_tensors_tuples_and_dicts(batch, n):
    assert batch_size(batch) == n == extract_batch_size(batch)
