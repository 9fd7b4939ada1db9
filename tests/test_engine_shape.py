"""The engine's one-owner rules: any Trainer argument, plans that compose exactly, one stage accessor."""

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from pytorch_lightning.strategies import DDPStrategy

from stagetune.app import conf_dir
from stagetune.config import plan_of, validate
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
    assert len(errors) == 1 and errors[0].startswith("stagetune: config error: trainer.bogus='1': not an argument of pytorch_lightning.Trainer; the closest are trainer.")
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
