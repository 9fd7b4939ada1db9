"""A two-stage plan on a tiny model: frozen means unchanged to the bit, stage two is as configured."""

import inspect

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import TorchSyncBatchNorm
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from stagetune.engine.groups import LayerGroup
from stagetune.engine.plan import Plan, StagePlan
from tests.helpers.plans import make_plan
from tests.tiny import TinyData, TinyNet, quiet_trainer


class Recorder(pl.Callback):
    """Snapshots of the model at each epoch start and the LR of every param group at every step."""

    def __init__(self):
        self.snapshots, self.lrs, self.optimizers = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.snapshots.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})
        self.optimizers.append(trainer.optimizers[0])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    def on_train_end(self, trainer, pl_module):
        self.snapshots.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def fit(plan: Plan, tmp_path):
    pl.seed_everything(0)
    model, data = TinyNet(), TinyData()
    recorder = Recorder()
    trainer = quiet_trainer(max_epochs=plan.total_epochs, callbacks=[StagePlan(plan), recorder], limit_val_batches=None, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    return model, trainer, recorder


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_frozen_groups_do_not_change_by_a_bit(tmp_path):
    model, trainer, rec = fit(make_plan(train_bn=False), tmp_path)
    start, end_of_frozen, end = rec.snapshots[0], rec.snapshots[2], rec.snapshots[-1]
    assert changed(start, end_of_frozen) == {"head.weight", "head.bias"}
    # every parameter and buffer trains once unfrozen
    assert {"early.0.weight", "early.1.weight", "early.1.running_mean", "late.0.weight"} <= changed(end_of_frozen, end)


def test_train_bn_keeps_normalisation_training_while_frozen(tmp_path):
    model, trainer, rec = fit(make_plan(train_bn=True), tmp_path)
    diff = changed(rec.snapshots[0], rec.snapshots[2])
    assert diff == {
        "head.weight",
        "head.bias",
        "early.1.weight",
        "early.1.bias",
        "early.1.running_mean",
        "early.1.running_var",
        "early.1.num_batches_tracked",
    }


def test_stage_two_param_groups_and_schedule_restart(tmp_path):
    model, trainer, rec = fit(make_plan(train_bn=False), tmp_path)
    steps_per_epoch = 8
    stage2 = rec.optimizers[2]
    assert stage2 is not rec.optimizers[0], "a new optimizer (fresh Adam state) at the stage boundary"
    peaks = {g["name"]: g["max_lr"] for g in stage2.param_groups}
    assert peaks["body_early"] == pytest.approx(1e-4)
    assert peaks["body_late"] == pytest.approx(1e-3)
    assert peaks["head"] == pytest.approx(1e-2)
    assert peaks["head/no_wd"] == pytest.approx(1e-2)
    # stage 1 ends near the bottom of its cycle; stage 2 starts again at peak/div
    last_of_stage1 = rec.lrs[2 * steps_per_epoch - 1]
    first_of_stage2 = rec.lrs[2 * steps_per_epoch]
    assert set(last_of_stage1) == {"head", "head/no_wd"}
    assert last_of_stage1["head"] < 1e-2 / 25
    assert first_of_stage2["body_early"] == pytest.approx(1e-4 / 5)
    assert first_of_stage2["head"] == pytest.approx(1e-2 / 5)
    assert len(rec.lrs) == 4 * steps_per_epoch
    history = trainer.callbacks[0].history
    assert [h["stage"] for h in history] == ["frozen", "unfrozen"]
    assert history[1]["lr"] == pytest.approx({"body_early": 1e-4, "body_late": 1e-3, "head": 1e-2})
    assert history[0]["trainable_groups"] == ["head"]


def test_stage_lookup_by_epoch():
    plan = make_plan(train_bn=True)
    assert [plan.stage_at(e) for e in range(5)] == [0, 0, 1, 1, 1]
    assert plan.first_epoch(1) == 2
    assert plan.total_epochs == 4


class ConvertingStrategy(SingleDeviceStrategy):
    """One CPU process that swaps in SyncBatchNorm layers where ``DDPStrategy.setup`` does: after
    the callbacks' ``setup``, before ``configure_optimizers`` (DDP itself refuses SyncBatchNorm on CPU)."""

    def setup(self, trainer: pl.Trainer) -> None:
        self.model = TorchSyncBatchNorm().apply(self.model)
        super().setup(trainer)


class NormModes(pl.Callback):
    """Class and mode of every BatchNorm layer at every training batch (after StagePlan's hooks)."""

    def __init__(self):
        self.modes = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        norms = [m for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self.modes.append((trainer.current_epoch, tuple((type(m).__name__, m.training) for m in norms)))


class LayersListed(TinyNet):
    """TinyNet whose first group lists its layers one by one, the BatchNorm among them (as ResNet34's ``bn1``)."""

    def layer_groups(self):
        return [LayerGroup("body_early", tuple(self.early)), *super().layer_groups()[1:]]


def test_ddp_strategy_converts_norm_layers_before_building_the_optimizer():
    """What ConvertingStrategy copies: pytorch-lightning 2.6's DDPStrategy.setup (fails loudly if it changes)."""
    source = inspect.getsource(DDPStrategy.setup)
    assert 0 <= source.index("self._layer_sync.apply(self.model)") < source.index("self.setup_optimizers(trainer)")


@pytest.mark.parametrize("train_bn", [False, True])
def test_frozen_norm_layers_converted_by_sync_batchnorm_follow_train_bn(train_bn, tmp_path):
    pl.seed_everything(0)
    plan, modes = make_plan(train_bn=train_bn), NormModes()
    trainer = quiet_trainer(
        max_epochs=plan.total_epochs, callbacks=[StagePlan(plan), modes], default_root_dir=tmp_path,
        strategy=ConvertingStrategy(device=torch.device("cpu")),
    )  # fmt: skip
    trainer.fit(LayersListed(), datamodule=TinyData())
    frozen_stage = {layers for epoch, layers in modes.modes if epoch < 2}
    unfrozen_stage = {layers for epoch, layers in modes.modes if epoch >= 2}
    assert frozen_stage == {(("SyncBatchNorm", train_bn),)}
    assert unfrozen_stage == {(("SyncBatchNorm", True),)}
