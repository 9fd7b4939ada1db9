"""Each Hydra command's ``--help`` names the command the user typed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("module", "name"), [("stagetune.commands.train", "stagetune"), ("stagetune.commands.lr_find", "stagetune-lr-find")])
def test_help_names_its_own_command(module, name):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    code = f"import sys; sys.argv = [{name!r}, '--help']; from {module} import main; main()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert out.splitlines()[0] == f"{name} is powered by Hydra."
