"""examples/: a user's own LightningModule trained in stages, with plain Lightning and through stagetune's Hydra configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.cli import ROOT, run_cli

EXAMPLES = ROOT / "examples"
HYDRA = [f"hydra.searchpath=[file://{EXAMPLES / 'own_module_hydra' / 'conf'}]", "experiment=own_module", "logger=none", "trainer.enable_progress_bar=true"]


def run_python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), str(EXAMPLES)])
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_import_stagetune_is_light_and_exports_the_engine():
    out = run_python(
        "-c",
        "import sys, stagetune; assert 'torch' not in sys.modules, 'torch loaded'; "
        "import json; print(stagetune.StagePlan.__module__, 'torch' in sys.modules, json.dumps(stagetune.__all__))",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    module, torch_loaded, names = out.stdout.split(" ", 2)
    assert module == "stagetune.engine.plan" and torch_loaded == "True"
    names = json.loads(names)
    assert {"Plan", "Stage", "StagePlan", "LayerGroup", "staged_optimizers", "Until"} <= set(names)
    assert not any(name.startswith("_") for name in names)


def test_own_module_example_trains_in_stages_with_plain_lightning():
    out = run_python(str(EXAMPLES / "own_module.py"))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    frozen, unfrozen = (line for line in lines if line.startswith("stage "))
    assert frozen.startswith("stage frozen: epochs 1-") and frozen.endswith("training head 5.0e-02")
    assert unfrozen.endswith("training body 1.0e-03, head 1.0e-02")
    assert float(lines[-1].split()[-1]) > 0.5, "it learnt: 3 classes, chance is 0.33"


def test_a_module_with_its_own_optimizer_is_told_in_one_line():
    code = (
        "import torch, pytorch_lightning as pl; from own_module import Classifier, Blobs; from stagetune import Plan, Stage, StagePlan\n"
        "class Own(Classifier):\n    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=0.1)\n"
        "pl.Trainer(max_epochs=1, callbacks=[StagePlan(Plan(stages={'all': Stage(freeze_to=0)}))], logger=False, enable_checkpointing=False,"
        " enable_progress_bar=False).fit(Own(), datamodule=Blobs())"
    )
    out = run_python("-c", code)
    assert out.returncode != 0 and "Own.configure_optimizers() did not build the plan's optimizer: return stagetune.staged_optimizers(self)" in out.stderr


@pytest.mark.usefixtures("one_thread")
def test_own_module_runs_through_stagetunes_hydra_configs(tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(EXAMPLES)])}
    out = run_cli(*HYDRA, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("plan: 2 stage(s), 15 epochs at most"), "the run prints its plan's table first"
    assert "stage frozen: epochs 1-12 at most, until val/loss (min) stops improving for 2, then its best weights" in out.stdout
    stages = json.loads((tmp_path / "run" / "metrics.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["frozen", "unfrozen"] and stages[1]["trainable_groups"] == ["body", "head"]
    evaluate = [sys.executable, "-m", "stagetune.commands.evaluate", str(tmp_path / "run")]
    refused = subprocess.run(evaluate, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert refused.returncode != 0 and "STAGETUNE_TRUSTED_TARGETS" in refused.stderr, "a run directory builds the user's code only when trusted"
    trusted = subprocess.run(evaluate, capture_output=True, text=True, env={**os.environ, **env, "STAGETUNE_TRUSTED_TARGETS": "own_module"}, timeout=300)
    assert trusted.returncode == 0, trusted.stderr[-2000:]
