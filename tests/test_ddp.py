"""DDP on CPU (gloo, 2 processes): ranks stay identical through unfreezing, and equal one big batch."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import ROOT, run_cli

TINY = [f"hydra.searchpath=[file://{ROOT}/tests/conf]", "experiment=tiny"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_run_dir(root: Path, experiment: str = "tiny") -> Path:
    dirs = [p.parent for p in root.glob(f"outputs/{experiment}/*/metrics.json")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_unfreezing_under_ddp_keeps_every_rank_identical(tmp_path):
    dumps = tmp_path / "dumps"
    out = run_cli(*TINY, "trainer=ddp_cpu", "+callbacks.dump._target_=tests.tiny.StateDump", f"+callbacks.dump.out={dumps}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for epoch in range(5):
        rank0 = torch.load(dumps / f"rank0-epoch{epoch}.pt")
        rank1 = torch.load(dumps / f"rank1-epoch{epoch}.pt")
        different = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
        assert different == [], f"epoch {epoch}: ranks differ in {different}"
    end_of_frozen = torch.load(dumps / "rank0-epoch1.pt")
    end = torch.load(dumps / "rank0-epoch4.pt")
    assert not torch.equal(end_of_frozen["early.0.weight"], end["early.0.weight"]), "the body trained once unfrozen"
    assert not torch.equal(end_of_frozen["late.0.weight"], end["late.0.weight"])
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
    assert [s["stage"] for s in metrics["stages"]] == ["frozen", "unfrozen"]


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(tmp_path):
    no_bn = [*TINY, "model.batchnorm=false", "data.n=64"]
    ddp = run_cli(*no_bn, "trainer=ddp_cpu", "data.batch_size=8", cwd=tmp_path / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_cli(*no_bn, "trainer=cpu", "data.batch_size=16", cwd=tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = final_weights(only_run_dir(tmp_path / "ddp")), final_weights(only_run_dir(tmp_path / "single"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
    first = final_weights(only_run_dir(tmp_path / "ddp"))
    assert not torch.equal(first["early.0.weight"], torch.zeros_like(first["early.0.weight"]))


def test_a_sweep_of_ddp_jobs_gives_each_job_its_own_group_and_directory(tmp_path):
    out = run_cli("-m", *TINY, "trainer=ddp_cpu", "optim.wd=0,0.1", "plan.stages.frozen.epochs=1", "plan.stages.unfrozen.epochs=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(tmp_path.glob("outputs/tiny/multirun/*/*/metrics.json"))
    assert len(jobs) == 2
    records = [json.loads(p.read_text()) for p in jobs]
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert [r["world_size"] for r in records] == [2, 2]
    assert [r["stages"][0]["wd"] for r in records] == [0.0, 0.1]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun not installed")
def test_two_node_torchrun_writes_one_run_directory(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    port = free_port()
    cmd = [
        torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "stagetune", *TINY,
        "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2",
        "plan.stages.frozen.epochs=1", "plan.stages.unfrozen.epochs=1",
    ]  # fmt: skip
    env = {**__import__("os").environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    metrics = json.loads((only_run_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["world_size"] == 2
