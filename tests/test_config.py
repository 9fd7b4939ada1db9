"""The real configs compose, and every bad value stops the run with one line naming it."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from stagetune.app import conf_dir
from stagetune.config import validate
from stagetune.errors import ConfigError
from tests.helpers.cli import ROOT, run_cli
from tests.helpers.configs import EXPERIMENTS, composed


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = validate(composed(f"experiment={experiment}"))
    assert cfg.experiment == experiment
    assert cfg.plan.stages, "a plan with stages"
    assert "_target_" in cfg.model and "_target_" in cfg.data


def test_short_names_move_every_stage():
    cfg = validate(composed("plan=fine_tune", "plan.lr=1e-3", "optim.wd=0.05"))
    assert list(cfg.plan.stages.frozen.lr) == [1e-3]
    assert list(cfg.plan.stages.unfrozen.lr) == pytest.approx([1e-3 / 200, 1e-3 / 2])
    assert cfg.optim.wd == 0.05


def test_a_stage_key_can_be_set_directly():
    cfg = validate(composed("plan=fine_tune", "plan.stages.unfrozen.lr=[1e-6,1e-4]", "plan.stages.frozen.wd=0.2"))
    assert list(cfg.plan.stages.unfrozen.lr) == [1e-6, 1e-4]
    assert cfg.plan.stages.frozen.wd == 0.2


BAD = [
    ("plan=fine_tune", "plan.stages.unfrozen.lr=[1e-3,1e-5]", "plan.stages.unfrozen.lr", "low end is above the high end"),
    ("plan=fine_tune", "plan.stages.unfrozen.lr=[0,1e-3]", "plan.stages.unfrozen.lr", "> 0"),
    ("plan=fine_tune", "plan.stages.frozen.epochs=0", "plan.stages.frozen.epochs", ">= 1"),
    ("plan=fit_one_cycle", "optim.wd=-0.1", "optim.wd", ">= 0"),
    ("plan=fit_one_cycle", "optim.name=lamb", "optim.name", "adam, sgd, sgd_scratch"),
    ("plan=fit_one_cycle", "optim.wd_kind=both", "optim.wd_kind", "l2, decoupled"),
    ("plan=fit_one_cycle", "plan.stages.all.schedule=step", "plan.stages.all.schedule", "one_cycle, constant, cosine"),
    ("plan=fit_one_cycle", "plan.stages.all.epochs=two", "plan.stages.all.epochs", "could not be converted"),
    ("plan=fit_one_cycle", "plan.lr=-1", "plan.lr", "> 0"),
    ("plan=fit_one_cycle", "plan.cache=maybe", "plan.cache", "auto, on, off"),
    ("plan=fit_one_cycle", "metric_mode=best", "metric_mode", "min, max"),
]


@pytest.mark.parametrize("plan,override,key,allowed", BAD)
def test_bad_values_name_key_value_and_allowed(plan, override, key, allowed):
    with pytest.raises(ConfigError) as err:
        validate(composed(plan, override))
    assert err.value.key == key
    assert allowed in str(err.value)
    assert "\n" not in str(err.value)


def test_freeze_to_past_the_groups_is_a_config_error():
    from stagetune.config import plan_of

    cfg = validate(composed("plan=fine_tune", "plan.stages.frozen.freeze_to=3"))
    with pytest.raises(ConfigError, match=r"plan.stages.frozen.freeze_to=3: the model has 3 layer groups: allowed -3..2"):
        plan_of(cfg).check_groups(n_groups=3)


def test_cli_config_error_is_one_line_with_exit_code_2(tmp_path):
    out = run_cli("plan.lr=-1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["stagetune: config error: plan.lr=-1.0: must be > 0"]


def test_cli_unknown_key_and_unknown_experiment_exit_2(tmp_path):
    out = run_cli("optim.wdd=0.1", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "optim.wdd" in out.stderr
    out = run_cli("experiment=nope", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "Available options in 'experiment'" in out.stderr
    for name in EXPERIMENTS:
        assert name in out.stderr


def test_the_slurm_launcher_composes():
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.stagetune_slurm.requeue_launcher.RequeueResumingSlurmLauncher"  # Hydra's, resuming requeued jobs
    assert launcher.nodes == 2 and launcher.tasks_per_node == 8 and launcher.partition == "gpu"


GOLDEN = ROOT / "tests" / "golden" / "experiments"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_to_its_recorded_config(experiment):
    """A recipe that inherits a base (``defaults: [base/movielens]``) composes key for key to what it
    composed to when it stated everything; a deliberate change rewrites the file (tests/golden/README.md)."""
    assert OmegaConf.to_yaml(composed(f"experiment={experiment}"), sort_keys=True) == (GOLDEN / f"{experiment}.yaml").read_text()


def test_every_experiment_has_a_recorded_config():
    assert sorted(p.stem for p in GOLDEN.glob("*.yaml")) == EXPERIMENTS


def test_movielens_best_is_the_side_feature_svdpp_recipe_refit():
    """``experiment=movielens_best`` names ``movielens_svdpp_side`` under the refit protocol: key for key
    the same run, but for its name and ``refit: true``."""
    best, named = (OmegaConf.to_container(composed(f"experiment={name}")) for name in ("movielens_best", "movielens_svdpp_side"))
    assert best.pop("experiment") == "movielens_best" and best.pop("refit") is True
    assert named.pop("experiment") == "movielens_svdpp_side" and named.pop("refit") is False
    assert best == named
