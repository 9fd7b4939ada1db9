"""The TensorBoard screenshot script fails loudly when TensorBoard does not come up."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_tensorboard.sh"


def test_script_exits_nonzero_without_wrote_when_tensorboard_does_not_start(tmp_path):
    out = tmp_path / "shot.png"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path), str(out), "6199"],
        env={"PATH": "/usr/bin:/bin", "TENSORBOARD": "/bin/false"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "wrote" not in proc.stdout
    assert "did not come up" in proc.stderr
    assert not out.exists()
