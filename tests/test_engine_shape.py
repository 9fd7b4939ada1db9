"""The engine's one-owner rules: any Trainer argument, plans that compose exactly, one stage accessor."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from pytorch_lightning.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from stagetune.app import conf_dir
from stagetune.config import plan_of, validate
from stagetune.engine.cache import set_training_source, training_source
from stagetune.engine.plan import StagePlan
from stagetune.errors import ConfigError
from tests.helpers.cli import run_cli
from tests.helpers.plans import make_plan
from tests.tiny import TinyData, TinyNet, quiet_trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny"]


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return validate(compose(config_name="train", overrides=list(overrides)))


@pytest.mark.parametrize("override", ["trainer.val_check_interval=0.5", "trainer.max_time=00:00:05:00", "trainer.fast_dev_run=true"])
def test_any_trainer_argument_passes_through_to_a_run(tmp_path, override):
    out = run_cli(*TINY, override, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    if override.endswith("fast_dev_run=true"):
        assert metrics["global_step"] == 1, "fast_dev_run trains one batch"


def test_an_unknown_trainer_key_is_one_line_naming_the_closest_keys(tmp_path):
    out = run_cli(*TINY, "trainer.bogus=1", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(
        "stagetune: config error: trainer.bogus='1': not an argument of pytorch_lightning.Trainer; the closest are trainer."
    )
    out = run_cli(*TINY, "trainer.val_check_intervall=0.5", cwd=tmp_path)
    assert out.returncode == 2 and "the closest are trainer.val_check_interval" in out.stderr


@pytest.mark.parametrize("key", ["max_epochs", "max_steps"])
def test_the_plan_owns_the_run_length(key):
    with pytest.raises(ConfigError, match=f"trainer.{key}='3': the plan sets"):
        from stagetune.engine.trainer import check_trainer_overrides

        check_trainer_overrides([f"trainer.{key}=3"])


def test_choosing_a_plan_gives_exactly_its_stages():
    cfg = composed("experiment=digits_transfer", "plan=fit_one_cycle")
    assert list(cfg.plan.stages) == ["all"]
    assert list(composed("experiment=digits_transfer").plan.stages) == ["frozen", "unfrozen"]
    assert plan_of(composed("experiment=digits_transfer")).total_epochs == 12


def test_an_override_naming_a_stage_the_plan_lacks_is_refused():
    with pytest.raises(ConfigError, match=r"plan.stages.typo=.*the chosen plan has no stage 'typo' \(its stages: all\)"):
        composed("plan=fit_one_cycle", "+plan.stages.typo.epochs=3")


def test_a_stage_key_the_yaml_does_not_state_can_be_overridden():
    cfg = composed("plan=fine_tune", "plan.stages.frozen.div=10", "optim.eps=1e-8")
    assert cfg.plan.stages.frozen.div == 10 and cfg.optim.eps == 1e-8


def test_an_invalid_choice_names_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError) as err:
        composed("plan=fine_tune", "plan.stages.unfrozen.schedule=step")
    assert err.value.key == "plan.stages.unfrozen.schedule"
    assert "one_cycle, constant, cosine" in str(err.value)


class StageProbe(pl.Callback):
    """The accessor's answer at each epoch start (after the StagePlan's switch) and batch."""

    def __init__(self):
        self.seen = []

    def setup(self, trainer, pl_module, stage):
        self.seen.append(("setup", StagePlan.of(trainer).stage.name))

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen.append((trainer.current_epoch, StagePlan.of(trainer).stage.name))


def test_the_accessor_gives_the_active_stage_before_at_and_after_the_boundary(tmp_path):
    probe = StageProbe()
    trainer = quiet_trainer(max_epochs=4, callbacks=[StagePlan(make_plan(train_bn=True)), probe], default_root_dir=tmp_path)
    trainer.fit(TinyNet(), datamodule=TinyData())
    assert probe.seen == [("setup", "frozen"), (0, "frozen"), (1, "frozen"), (2, "unfrozen"), (3, "unfrozen")]
    assert StagePlan.of(trainer).stage.name == "unfrozen" and StagePlan.of(trainer).index == 1
    with pytest.raises(RuntimeError, match="exactly one StagePlan"):
        StagePlan.of(quiet_trainer(max_epochs=1))


def test_the_private_lightning_hooks_stagetune_relies_on_still_exist(tmp_path):
    """DDP re-wrap and the feature cache's loader swap use these (pytorch-lightning 2.6); fail loudly if they go."""
    assert callable(DDPStrategy._setup_model) and callable(DDPStrategy._register_ddp_hooks)
    trainer = quiet_trainer(max_epochs=1, default_root_dir=tmp_path)
    loop = trainer.fit_loop
    assert hasattr(loop, "_data_source") and hasattr(loop, "_combined_loader") and callable(loop.setup_data)


def test_the_training_loader_swaps_mid_fit_and_comes_back(tmp_path):
    """engine/cache.py's two private-Lightning functions (pytorch-lightning 2.6): a loader set mid-fit feeds that epoch, the original the next."""
    zeros = DataLoader(TensorDataset(torch.zeros(16, 6), torch.zeros(16, dtype=torch.long)), batch_size=4)
    seen = []

    class Swap(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                self.original = training_source(trainer)
                set_training_source(trainer, zeros, reload=True)
            elif trainer.current_epoch == 2:
                set_training_source(trainer, self.original, reload=True)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.current_epoch, bool(batch[0].abs().sum() == 0)))

    trainer = quiet_trainer(max_epochs=3, callbacks=[StagePlan(make_plan(train_bn=True)), Swap()], default_root_dir=tmp_path)
    trainer.fit(TinyNet(), datamodule=TinyData())
    assert seen == [(0, False)] * 8 + [(1, True)] * 4 + [(2, False)] * 8


class ViewProbe(pl.Callback):
    def __init__(self):
        self.seen = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen[trainer.current_epoch] = StagePlan.of(trainer).active


def test_the_active_stage_reads_as_a_read_only_view(tmp_path):
    probe = ViewProbe()
    trainer = quiet_trainer(max_epochs=4, callbacks=[StagePlan(make_plan(train_bn=True)), probe], default_root_dir=tmp_path)
    trainer.fit(TinyNet(), datamodule=TinyData())
    frozen, unfrozen = probe.seen[1], probe.seen[2]
    assert (frozen.name, frozen.index, frozen.first_epoch, frozen.last_epoch, frozen.groups) == ("frozen", 0, 0, 1, ("head",))
    assert frozen.lrs == {"head": pytest.approx(1e-2)} and frozen.first_group == 2 and probe.seen[0] == frozen
    assert (unfrozen.name, unfrozen.index, unfrozen.first_epoch, unfrozen.last_epoch) == ("unfrozen", 1, 2, 3)
    assert unfrozen.groups == ("body_early", "body_late", "head") and unfrozen.first_group == 0
    assert unfrozen.lrs == pytest.approx({"body_early": 1e-4, "body_late": 1e-3, "head": 1e-2})
    assert [s.name for s in StagePlan.of(trainer).stages] == ["frozen", "unfrozen"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        unfrozen.index = 0


def test_readers_outside_the_stage_plan_use_its_views():
    """Only engine/plan.py reads the StagePlan's own state (plan, index, groups, found)."""
    internal = re.compile(r"StagePlan\.of\([^)]*\)\.(plan|index|groups|found|stage)\b|\b(stage_plan|plan)\.(plan|index|groups|found)\b")
    src = Path(__file__).resolve().parents[1] / "src" / "stagetune"
    readers = [p for p in src.rglob("*.py") if p.name != "plan.py" and "StagePlan" in p.read_text()]
    assert readers, "the scan found the readers"
    offending = [f"{p.relative_to(src)}: {m.group(0)}" for p in readers for m in internal.finditer(p.read_text())]
    assert offending == []
