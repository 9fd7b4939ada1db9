"""The learning-rate grammar (engine/learning_rate.py): its words, the docs' table, and HParams against the optimizer."""

from __future__ import annotations

import ast
import re

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir

from stagetune.app import conf_dir
from stagetune.config import plan_of, validate
from stagetune.engine.groups import LayerGroup
from stagetune.engine.learning_rate import check_lr, group_rates, mul, shares
from stagetune.engine.plan import StagePlan
from stagetune.errors import ConfigError
from stagetune.runs.hparams import stage_hparams
from tests.helpers.cli import ROOT
from tests.tiny import TinyData, TinyNet, quiet_trainer

DOC = ROOT / "docs" / "learning-rates.md"
PLANS = sorted(p.stem for p in (conf_dir() / "plan").glob("*.yaml"))


def test_mul_turns_find_into_find_times_k_and_multiplies_numbers():
    assert mul("find", 0.5) == "find*0.5" and mul(mul("find", 0.5), 0.1) == "find*0.05"
    assert mul(2e-3, 0.5) == pytest.approx(1e-3) and mul("2e-3", 2) == pytest.approx(4e-3)


def test_find_terms_are_a_shape_whose_top_the_range_test_sets():
    assert group_rates(("find*0.005", "find*0.5"), 3, found=1e-2) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert group_rates("find*0.5", 3, found=1e-2) == [1e-2] * 3, "a one-number find*K trains at the rate found"
    assert shares(("find*0.005", "find*0.5"), 3) == pytest.approx([0.01, 0.1, 1.0])
    with pytest.raises(ValueError, match="needs the rate"):
        group_rates("find", 2)
    with pytest.raises(ConfigError, match="cannot be mixed"):
        check_lr("plan.stages.x.lr", (1e-4, "find"))


def doc_rows() -> list[tuple[str, str, list[float]]]:
    """The table in docs/learning-rates.md: ``lr`` as written, the rate found (or -), the three groups' rates."""
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.match(r"^[0-9][0-9.e-]*$", cells[2]):
            rows.append((cells[0], cells[1], [float(c) for c in cells[2:]]))
    return rows


def test_the_docs_table_is_what_the_grammar_gives():
    rows = doc_rows()
    assert len(rows) >= 6
    for written, found, rates in rows:
        lr = written if written.startswith("find") else ast.literal_eval(written)
        lr = tuple(lr) if isinstance(lr, list) else lr
        assert group_rates(lr, 3, None if found == "-" else float(found)) == pytest.approx(rates, rel=1e-3), written


class Named(TinyNet):
    """TinyNet with a last group called ``biases``: plan=biases_first names it."""

    def layer_groups(self):
        return [LayerGroup("early", (self.early,)), LayerGroup("late", (self.late,)), LayerGroup("biases", (self.head,))]


class Peaks(pl.Callback):
    """The peak rate the optimizer holds for each trainable layer group, at each stage's first step."""

    def __init__(self):
        self.by_stage: dict[str, dict[str, float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        name = StagePlan.of(trainer).active.name
        if name not in self.by_stage:
            groups = trainer.optimizers[0].param_groups
            self.by_stage[name] = {g["name"].split("/")[0]: g.get("max_lr", g.get("initial_lr")) for g in groups if "/frozen_bn" not in g["name"]}


@pytest.mark.parametrize("name", PLANS)
def test_hparams_give_the_rates_the_optimizer_holds_under_plan_lr_find(name, tmp_path):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny", f"plan={name}", "plan.lr=find"])
    plan = plan_of(validate(cfg)).for_groups(3)  # plan=gradual: its stages for Named's three groups
    for stage in plan.ordered:
        stage.epochs = 1
    found = {stage.name: 1e-3 * (k + 2) for k, stage in enumerate(plan.ordered)}
    peaks = Peaks()
    stage_plan = StagePlan(plan, finder=lambda module, data, stage, key: found[stage.name])
    trainer = quiet_trainer(max_epochs=plan.total_epochs, limit_train_batches=2, callbacks=[stage_plan, peaks], default_root_dir=tmp_path)
    trainer.fit(Named(), datamodule=TinyData())
    hparams = stage_hparams(StagePlan.of(trainer).stages)
    assert set(peaks.by_stage) == set(found)
    for stage in StagePlan.of(trainer).stages:
        held = peaks.by_stage[stage.name]
        assert stage.lrs == pytest.approx(held), f"plan={name}: stage {stage.name}"
        assert hparams[f"plan.stages.{stage.name}.lr_lo"] == pytest.approx(min(held.values()))
        assert hparams[f"plan.stages.{stage.name}.lr_hi"] == pytest.approx(max(held.values()))
