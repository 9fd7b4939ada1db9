"""DDP evaluation counts every example once: 2 gloo ranks give one process's metrics on 179 examples."""

import json
import subprocess
import sys

import pytest

from stagetune.engine.loaders import EvalShard
from tests.helpers.cli import ROOT, _cli_env


@pytest.mark.parametrize("n, world", [(179, 2), (10, 3), (2, 4), (64, 2)])
def test_eval_shards_hold_every_example_exactly_once(n, world):
    shards = [list(EvalShard(n, world, rank)) for rank in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(s) for s in shards] == [len(EvalShard(n, world, rank)) for rank in range(world)]


def evaluate(kind: str, devices: int, tmp_path) -> dict:
    out = tmp_path / f"{kind}-{devices}.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.ddp_eval", kind, str(devices), str(out)],
        cwd=ROOT, env=_cli_env({"OMP_NUM_THREADS": "1"}), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["world_size"] == devices
    return record


@pytest.mark.parametrize(
    "kind, keys",
    [
        ("vision", {"val/loss", "val/acc", "val/error_rate", "val/top5", "test/loss", "test/acc", "test/error_rate", "test/top5"}),
        ("ratings", {"val/loss", "val/rmse", "val/mae", "test/loss", "test/rmse", "test/mae"}),
    ],
)
def test_two_ranks_give_one_process_metrics_on_an_odd_split(kind, keys, tmp_path):
    one, two = evaluate(kind, 1, tmp_path), evaluate(kind, 2, tmp_path)
    assert one["per_rank"] == {"val": [179], "test": [179]}
    assert two["per_rank"] == {"val": [90, 89], "test": [90, 89]}, "each rank evaluates its own half, nothing repeated"
    assert set(one["metrics"]) == set(two["metrics"]) == keys
    for key in sorted(keys):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-6, rel=0), key
