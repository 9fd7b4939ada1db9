"""``--help`` that helps: each command names itself; ``stagetune --help`` lists what there is to run."""

import io
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from stagetune.app import COMMANDS, conf_dir
from stagetune.config import validate
from stagetune.console import print_config_tree
from tests.helpers.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def command_help(name: str) -> str:
    module = SCRIPTS[name].split(":")[0]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    code = f"import sys; sys.argv = [{name!r}, '--help']; from {module} import main; main()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True).stdout


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_names_its_own_command(name):
    first = command_help(name).splitlines()[0]
    assert first.startswith(f"{name}: ") or first.startswith(f"usage: {name} ")


def test_the_help_page_lists_every_command_of_the_package():
    assert sorted(COMMANDS) == sorted(SCRIPTS)


def test_stagetune_help_lists_experiments_groups_and_commands():
    out = command_help("stagetune")
    experiments = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
    assert f"experiment: {', '.join(experiments)}" in out
    for group in ("callbacks", "debug", "logger", "paths", "plan", "trainer"):
        assert f"\n{group}: " in out
    for name in SCRIPTS:
        assert f"\n  {name} " in out


def test_print_config_prints_each_top_level_key_as_a_branch():
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = validate(compose("train", overrides=["experiment=ratings_synthetic"]))
    out = io.StringIO()
    print_config_tree(cfg, out)
    text = out.getvalue()
    assert "\nplan:\n" in text and "\n  stages:\n" in text and "experiment:\n  ratings_synthetic\n" in text


def test_print_config_shows_the_config_and_the_run_goes_on(tmp_path):
    result = run_cli(f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny", "logger=none", "print_config=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stages" in result.stdout and "tiny" in result.stdout, "the config, on stdout"
    assert list(tmp_path.glob("outputs/tiny/*/metrics.json")), "the run went on"
