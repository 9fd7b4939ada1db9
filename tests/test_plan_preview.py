"""``stagetune-plan``: the composed config's plan as a table, before anything trains."""

from __future__ import annotations

import re

import pytest

from stagetune.errors import ConfigError
from stagetune.runs.preview import preview
from tests.helpers.cli import ROOT

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny"]


def stage_rows(table: str) -> dict[str, dict[str, list[str]]]:
    """stage name -> group name -> the row's cells (params, trains, lr, wd)."""
    out: dict[str, dict[str, list[str]]] = {}
    for line in table.splitlines():
        if line.startswith("stage "):
            current = out.setdefault(line.split()[1].rstrip(":"), {})
        elif line.startswith("  ") and not line.split()[0] == "group":
            name, *cells = line.split()
            current[name] = cells
    return out


def test_digits_transfer_shows_both_stages_and_the_slice_lr_over_20_to_lr_over_2():
    table = preview(["experiment=digits_transfer"])
    stages = stage_rows(table)
    assert list(stages) == ["frozen", "unfrozen"]
    assert [row[1:3] for row in stages["frozen"].values()] == [["-", "-"], ["-", "-"], ["yes", "4.00e-03"]]
    lr = 4e-3  # experiment=digits_transfer's plan.lr; plan=digits_transfer's unfrozen stage trains at slice(lr/20, lr/2)
    rates = [float(row[2]) for row in stages["unfrozen"].values()]
    assert rates == pytest.approx([lr / 20, (lr / 20 * lr / 2) ** 0.5, lr / 2], rel=1e-2)
    assert "stage frozen: epochs 1-4;" in table and "stage unfrozen: epochs 5-12;" in table
    params = [int(row[0].replace(",", "")) for row in stages["unfrozen"].values()]
    assert sum(params) == int(re.search(r"; ([0-9,]+) parameters", table).group(1).replace(",", ""))


def test_the_tiny_model_built_for_real_gives_its_parameter_counts_and_overrides_apply():
    stages = stage_rows(preview([*TINY, "plan.lr=1e-3", "plan.stages.unfrozen.wd=0.5"], build_weights=True))
    # TinyNet: Linear(6, 8) + BatchNorm1d(8), Linear(8, 8), Linear(8, 3)
    assert [row[0] for row in stages["frozen"].values()] == ["72", "72", "27"]
    assert stages["frozen"]["body_early"][1] == "bn", "a frozen group whose norm layers train (train_bn)"
    assert [row[3] for row in stages["unfrozen"].values()] == ["0.5"] * 3
    assert float(stages["unfrozen"]["head"][2]) == pytest.approx(5e-4)


def test_plan_gradual_previews_one_stage_per_layer_group():
    stages = stage_rows(preview([*TINY, "plan=gradual"]))
    assert list(stages) == ["last1", "last2", "last3"]
    assert [[row[1] for row in stage.values()] for stage in stages.values()] == [["bn", "-", "yes"], ["bn", "yes", "yes"], ["yes", "yes", "yes"]]


def test_a_bad_override_is_a_config_error():
    with pytest.raises(ConfigError, match="overrides"):
        preview(["experiment=no_such_experiment"])
