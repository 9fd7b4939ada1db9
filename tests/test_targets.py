"""A run directory cannot run code: what is rebuilt from its config.yaml is allowlisted first.

A hostile config.yaml (a colleague's run, a downloaded example) whose ``_target_`` would write a
file writes nothing with predict, recommend, export or resume: the target is refused by name
before anything is called. A fresh run's own config (the user's command line) is not limited.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from stagetune.app import conf_dir
from stagetune.commands import export, predict, recommend
from stagetune.errors import StagetuneError
from stagetune.runs.run import train
from stagetune.runs.rundir import CONFIG_DIGEST_ENV, RunDir
from stagetune.runs.targets import ALLOWED, TRUST_ENV, UntrustedConfig, is_allowed, refusals
from tests.helpers.cli import ROOT, run_cli

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny"]


def tiny_config(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=[*TINY, "logger=none", *overrides])


def targets_in(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["_target_"]} if "_target_" in node else set()
        return found.union(*(targets_in(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(targets_in(v) for v in node))
    return set()


def test_the_allowlist_is_every_target_the_shipped_configs_use():
    shipped = set()
    for path in (ROOT / "conf").rglob("*.yaml"):
        if "hydra" not in path.relative_to(ROOT / "conf").parts:  # Hydra's own plugins, never in a run's config
            shipped |= targets_in(yaml.safe_load(path.read_text()))
    assert shipped == ALLOWED


def test_every_target_anywhere_in_the_tree_is_checked():
    cfg = OmegaConf.create(
        {
            "model": {"_target_": "stagetune.vision.models.ResNet34Classifier", "weights": None},
            "data": {"_target_": "builtins.open", "_args_": ["x", "w"]},
            "plan": {"stages": [{"f": {"_target_": "os.system", "_partial_": True}}]},
            "optim": {"_args_": [{"_target_": "shutil.rmtree", "_args_": ["/"]}]},
            "callbacks": {"odd": {"_target_": 3}},
            "paths": {"root": "${oc.env:HOME}", "missing": "???"},
        }
    )
    assert refusals(cfg, trusted=[]) == [
        "data._target_: builtins.open",
        "plan.stages.0.f._target_: os.system",
        "optim._args_.0._target_: shutil.rmtree",
        "callbacks.odd._target_: 3",
        "paths.root: an interpolation",
    ]


def test_a_trusted_module_covers_what_it_defines_not_what_it_imports():
    assert is_allowed("tests.tiny.TinyNet", ["tests.tiny"])
    assert not is_allowed("tests.tiny.os", ["tests.tiny"]) and not is_allowed("tests.tiny.os.system", ["tests.tiny"])
    assert not is_allowed("tests.tiny.Path", ["tests.tiny"]), "imported there, defined in pathlib"
    assert not is_allowed("tests.tiny._private", ["tests.tiny"]) and not is_allowed("tests.tiny.TinyNet", [])
    assert is_allowed("pathlib.Path", ["pathlib.Path"]) and not is_allowed("pathlib.Path.write_text", ["pathlib.Path"])
    assert not is_allowed("no_such_module.X", ["no_such_module"])


def hostile_nodes(pwned: Path) -> dict[str, tuple[str, dict]]:
    """Where a hostile target sits (the key it replaces) and what it would call, each writing ``pwned``."""
    return {
        "open": ("data", {"_target_": "builtins.open", "_args_": [str(pwned), "w"]}),
        "write_text": ("model.layers", [{"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": [str(pwned)]}, "data": "x"}]),
        "imported_by_a_trusted_module": ("data.seed", {"_target_": "tests.tiny.torch.save", "_args_": ["x", str(pwned)]}),
        "interpolation": ("data.n", f"${{stagetune.writable:{pwned}}}"),
    }


def hostile_run(tmp_path: Path, kind: str) -> tuple[Path, Path, str]:
    """A run directory whose config.yaml holds one hostile node, with a checkpoint good enough to get that far."""
    run, pwned = tmp_path / "run", tmp_path / "pwned"
    key, node = hostile_nodes(pwned)[kind]
    cfg = tiny_config()
    OmegaConf.update(cfg, key, node, merge=False, force_add=True)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    torch.save({"state_dict": {}, "callbacks": {"StagePlan": {}}, "global_step": 3}, run / "checkpoints" / "last.ckpt")
    named = node["_target_"] if isinstance(node, dict) else "an interpolation" if isinstance(node, str) else "pathlib.Path.write_text"
    return run, pwned, named


def run_main(module, *argv) -> int:
    with pytest.raises(SystemExit) as exit_:
        module.main([str(a) for a in argv])
    return exit_.value.code


@pytest.mark.parametrize("kind", ["open", "write_text", "imported_by_a_trusted_module", "interpolation"])
@pytest.mark.parametrize("command", ["predict", "recommend", "export", "resume"])
def test_a_hostile_run_config_writes_nothing(command, kind, tmp_path, capsys):
    run, pwned, named = hostile_run(tmp_path, kind)
    records = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    if command == "resume":
        with pytest.raises(UntrustedConfig) as refused:
            train(tiny_config(f"resume={run}"), run, [f"resume={run}"])
        RunDir(run).record_failure("failed", str(refused.value))  # as the command line does: a refusal is not the run's failure
        message = str(refused.value)
    else:
        argv = {
            "predict": [tmp_path, "--out", tmp_path / "p.csv"],
            "recommend": ["--user", 1],
            "export": ["--format", "torchscript", "--out", tmp_path / "m.pt"],
        }
        assert run_main({"predict": predict, "recommend": recommend, "export": export}[command], run, *argv[command]) == 1
        message = capsys.readouterr().err
        assert message.count("\n") == 1
    assert not pwned.exists()
    assert f"{run / 'config.yaml'}: refusing to build " in message and named in message and TRUST_ENV in message
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == records


def test_resuming_a_shared_run_with_a_hostile_callback_is_refused_and_leaves_it_as_it_was(tmp_path):
    run, pwned = tmp_path / "run", tmp_path / "pwned"
    kill = ["+callbacks.kill._target_=tests.tiny.KillAt", "+callbacks.kill.step=12", f"+callbacks.kill.marker={tmp_path}/killed"]
    killed = run_cli(*TINY, "logger=none", f"hydra.run.dir={run}", *kill, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.callbacks.evil = {"_target_": "builtins.open", "_args_": [str(pwned), "w"]}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    resumed = run_cli(f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 1
    assert (
        resumed.stderr.strip().splitlines()[-1].startswith(f"stagetune: error: {run / 'config.yaml'}: refusing to build callbacks.evil._target_: builtins.open")
    )
    assert not pwned.exists()
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before, "not marked failed, nothing rewritten (its train.log included)"


def test_a_fresh_run_may_name_its_own_callbacks(tmp_path, monkeypatch):
    monkeypatch.setenv(TRUST_ENV, "")  # the trust setting is for configs read back from run directories
    dumps = tmp_path / "dumps"
    cfg = tiny_config(
        "plan.stages.frozen.epochs=1", "plan.stages.unfrozen.epochs=1", "+callbacks.dump._target_=tests.tiny.StateDump", f"+callbacks.dump.out={dumps}"
    )
    train(cfg, tmp_path / "run")
    assert sorted(p.name for p in dumps.iterdir()) == ["rank0-epoch0.pt", "rank0-epoch1.pt"]


def test_a_started_rank_builds_only_the_config_its_rank_0_vouched_for(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    text = OmegaConf.to_yaml(tiny_config("+callbacks.mine._target_=my_package.MyCallback"))
    (run / "config.yaml").write_text(text)
    monkeypatch.delenv(CONFIG_DIGEST_ENV, raising=False)
    with pytest.raises(UntrustedConfig, match="my_package.MyCallback"):
        RunDir(run).rank_config()  # started by hand: checked like any run's config
    monkeypatch.setenv(CONFIG_DIGEST_ENV, RunDir(run).worker_env()[CONFIG_DIGEST_ENV])
    assert RunDir(run).worker_env()[CONFIG_DIGEST_ENV] == hashlib.sha256(text.encode()).hexdigest()
    assert RunDir(run).rank_config().callbacks.mine._target_ == "my_package.MyCallback"
    (run / "config.yaml").write_text(text + "seed: 7\n")
    with pytest.raises(StagetuneError, match="changed after rank 0 started the run"):
        RunDir(run).rank_config()


def test_a_worker_started_by_hand_refuses_a_hostile_config_in_one_line(tmp_path):
    run, pwned, named = hostile_run(tmp_path, "open")
    env = {k: v for k, v in os.environ.items() if k not in (CONFIG_DIGEST_ENV, "RANK", "SLURM_PROCID")}
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
    started = subprocess.run([sys.executable, "-m", "stagetune.commands.worker", str(run)], capture_output=True, text=True, env=env, timeout=120)
    assert started.returncode == 1
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in started.stderr, started.stderr
    assert lines[0].startswith(f"stagetune-worker: error: {run / 'config.yaml'}: refusing to build ") and named in lines[0]
    assert not pwned.exists()
