"""A stage that ends on a criterion (``until``, ``restore_best``), and ``plan.gradual`` for any number of layer groups."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from stagetune import Gradual, LayerGroup, Plan, Stage, StagePlan, Until
from stagetune.errors import ConfigError
from tests.helpers.cli import ROOT, run_cli
from tests.tiny import TinyData, TinyNet, quiet_trainer

# val/score by epoch: best at epoch 1, then two validations without improvement -> the stage ends after epoch 3
SCORES = [3.0, 2.0, 2.5, 2.6, 9.0, 9.0, 9.0, 9.0]


class Scripted(TinyNet):
    """TinyNet whose validation logs ``val/score`` from :data:`SCORES`, so the criterion's course is known."""

    def validation_step(self, batch, batch_idx):
        self.log("val/score", SCORES[self.current_epoch])


class Snapshots(pl.Callback):
    """The weights at each validation's end and at each epoch's start (after the StagePlan's switch)."""

    def __init__(self):
        self.validated, self.started = {}, {}

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_start(self, trainer, pl_module):
        self.started[trainer.current_epoch] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def until_plan(restore_best: bool = True) -> Plan:
    return Plan(
        stages={
            "frozen": Stage(freeze_to=-1, epochs=6, lr=[1e-2], until=Until(monitor="val/score", patience=2), restore_best=restore_best),
            "unfrozen": Stage(freeze_to=0, epochs=2, lr=[1e-4, 1e-2]),
        }
    )


def fit(plan: Plan, tmp_path, max_epochs: int | None = None, ckpt_path=None, callbacks=()):
    pl.seed_everything(0)
    trainer = quiet_trainer(
        max_epochs=max_epochs or plan.total_epochs,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=[StagePlan(plan), *callbacks],
        enable_checkpointing=bool(callbacks),
    )
    model = Scripted()
    trainer.fit(model, datamodule=TinyData(), ckpt_path=ckpt_path)
    return model, trainer


def test_a_stage_ends_when_its_monitor_stops_improving_and_the_next_starts_from_its_best_weights(tmp_path):
    snapshots = Snapshots()
    model, trainer = fit(until_plan(), tmp_path, callbacks=[snapshots])
    frozen, unfrozen = StagePlan.of(trainer).stages
    assert (frozen.first_epoch, frozen.last_epoch, unfrozen.first_epoch, unfrozen.last_epoch) == (0, 3, 4, 5)
    assert trainer.current_epoch == 6, "the fit ends after the last stage: 4 + 2 epochs, not 6 + 2"
    best = snapshots.validated[1]
    assert all(torch.equal(snapshots.started[4][k], best[k]) for k in best), "the unfrozen stage starts from epoch 1's weights"
    assert not all(torch.equal(snapshots.validated[3][k], best[k]) for k in best)
    record = StagePlan.of(trainer).history[0]
    assert record["restored_best"] is True and record["best_epoch"] == 1 and record["best"] == 2.0 and record["epochs_run"] == 4
    assert "val/score did not improve for 2 validations" in record["ended"]


def test_without_restore_best_the_next_stage_goes_on_from_the_last_weights(tmp_path):
    snapshots = Snapshots()
    fit(until_plan(restore_best=False), tmp_path, callbacks=[snapshots])
    last = snapshots.validated[3]
    assert all(torch.equal(snapshots.started[4][k], last[k]) for k in last)


def test_a_resume_mid_stage_keeps_the_criterion_and_ends_as_the_uninterrupted_fit(tmp_path):
    straight, _ = fit(until_plan(), tmp_path / "straight")
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    fit(until_plan(), tmp_path / "first", max_epochs=3, callbacks=[every])  # stops after epoch 2: one validation without improvement
    resumed, trainer = fit(until_plan(), tmp_path / "resumed", ckpt_path=tmp_path / "ckpt" / "epoch=2.ckpt")
    assert StagePlan.of(trainer).stages[0].last_epoch == 3 and trainer.current_epoch == 6
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_restore_best_needs_a_criterion():
    with pytest.raises(ConfigError, match=r"plan\.stages\.frozen\.restore_best.*needs until\.monitor"):
        StagePlan(Plan(stages={"frozen": Stage(freeze_to=-1, restore_best=True)}))


class Five(pl.LightningModule):
    """Five linear layers, one layer group each."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 6) for _ in range(4)] + [nn.Linear(6, 3)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def layer_groups(self):
        return [LayerGroup(f"layer{k}", (layer,)) for k, layer in enumerate(self.layers)]

    def configure_optimizers(self):
        from stagetune import staged_optimizers

        return staged_optimizers(self)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


def test_plan_gradual_on_a_five_group_model_gives_five_stages(tmp_path):
    plan = Plan(lr=1e-2, gradual=Gradual(epochs=1, lr=[1e-4, 1e-2]))
    trainer = pl.Trainer(
        callbacks=[StagePlan(plan)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        default_root_dir=tmp_path,
    )
    trainer.fit(Five(), datamodule=TinyData())
    stages = StagePlan.of(trainer).stages
    assert [s.name for s in stages] == ["last1", "last2", "last3", "last4", "last5"] and trainer.current_epoch == 5
    assert [s.groups for s in stages] == [tuple(f"layer{k}" for k in range(5 - n, 5)) for n in range(1, 6)]
    assert list(stages[0].lrs.values()) == pytest.approx([1e-2])
    assert list(stages[4].lrs.values()) == pytest.approx([1e-4, 10**-3.5, 1e-3, 10**-2.5, 1e-2])


def test_under_ddp_a_stage_ends_on_every_rank_at_once_and_the_ranks_stay_equal(tmp_path):
    # min_delta 10: no validation after the first counts as better, so the frozen stage ends after epoch 1 on both ranks
    dumps = tmp_path / "dumps"
    until = "plan.stages.frozen.until={monitor: val/loss, patience: 1, min_delta: 10}"
    out = run_cli(
        f"hydra.searchpath=[file://{ROOT}/tests/conf]",
        "experiment=tiny",
        "trainer=ddp_cpu",
        "logger=none",
        "plan.stages.frozen.epochs=6",
        until,
        "plan.stages.frozen.restore_best=true",
        "+callbacks.dump._target_=tests.tiny.StateDump",
        f"+callbacks.dump.out={dumps}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]
    frozen, unfrozen = json.loads((run / "metrics.json").read_text())["stages"]
    assert frozen["epochs_run"] == 2 and frozen["restored_best"] is True and frozen["best_epoch"] == 0 and unfrozen["first_epoch"] == 2
    epochs = sorted(int(p.stem.split("epoch")[1]) for p in dumps.glob("rank0-*.pt"))
    assert epochs == [0, 1, 2, 3, 4], "2 frozen epochs, then the 3 unfrozen ones: the fit ended with the plan"
    rank0, rank1 = (torch.load(dumps / f"rank{r}-epoch4.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
