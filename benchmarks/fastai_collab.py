"""``python -m benchmarks.fastai_collab [--repeats N] [--splits u1 random]``: stagetune's movielens
recipes against fastai's own, on the same parts of ML-100k, timed alternately in one run.

For each split, stagetune's data module makes the three parts (train, valid carved from it, test);
they are written out with their raw ids and fastai trains its recipe on the same train and valid
(``benchmarks/fastai_recipe.py``, run by the separate virtual environment ``outputs/bench/fastai-env``
that ``make bench-fastai`` installs: fastai is never a stagetune dependency). Both are scored on
the same test part. fastai and stagetune alternate (fastai first on even repeats), each in its own
process with ``OMP_NUM_THREADS=1``. Times are the fit's seconds: fastai's ``fit_one_cycle``, and
stagetune's ``time_s`` (fit plus the chosen checkpoint's evaluation, so stagetune is charged more);
start-up is left out of both. The table goes to stdout and ``outputs/bench/fastai/<time>/results.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from benchmarks.cases import config
from stagetune.app import PACKAGE_DIR
from stagetune.build import build
from stagetune.collab.data import UNKNOWN

ROOT = Path(__file__).resolve().parent.parent
FASTAI_PYTHON = ROOT / "outputs" / "bench" / "fastai-env" / "bin" / "python"
FASTAI_RECIPE = Path(__file__).with_name("fastai_recipe.py")
RECIPES = ("movielens", "movielens_nn")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_parts(cfg: DictConfig, out: Path) -> None:
    """The data module's train, valid and test parts as TSV with raw ids (``-1``: unseen in training)."""
    data = build(cfg.data)
    for name, part in zip(("train", "valid", "test"), data.parts()):
        users = np.where(part.users.numpy() == UNKNOWN, -1, data.user_ids[np.maximum(part.users.numpy() - 1, 0)])
        items = np.where(part.items.numpy() == UNKNOWN, -1, data.item_ids[np.maximum(part.items.numpy() - 1, 0)])
        np.savetxt(out / f"{name}.tsv", np.column_stack([users, items, part.ratings.numpy()]), fmt=["%d", "%d", "%g"], delimiter="\t")


def fastai_run(parts: Path, seed: int | None = None, refit: bool = False) -> dict:
    cmd = [str(FASTAI_PYTHON), str(FASTAI_RECIPE), str(parts), *([] if seed is None else [str(seed)]), *(["refit"] if refit else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fastai's run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stagetune_run(experiment: str, split: str, run_dir: Path, *overrides: str) -> dict:
    cmd = [sys.executable, "-m", "stagetune", f"experiment={experiment}", f"data.split={split}", f"hydra.run.dir={run_dir}", *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "PYTHONPATH": f"{PACKAGE_DIR.parent}:{ENV.get('PYTHONPATH', '')}"}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"stagetune {experiment} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    refit_cpu = metrics.get("refit", {}).get("cpu_s", 0.0)
    scores = {"valid_rmse": metrics["valid"]["val/rmse"], "test_rmse": metrics["test"]["test/rmse"]}
    return {"fit_s": metrics["time_s"], "cpu_s": round(metrics.get("cpu_s", 0.0) - refit_cpu, 2), "refit_cpu_s": refit_cpu, **scores}


def median(values: list[float]) -> float:
    return float(np.median(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fastai_collab", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--splits", nargs="+", default=["u1", "random"])
    args = parser.parse_args(argv)
    if not FASTAI_PYTHON.exists():
        raise SystemExit(f"no fastai environment at {FASTAI_PYTHON}: make bench-fastai installs it")
    out = ROOT / "outputs" / "bench" / "fastai" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True)
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in args.splits:
            parts = Path(tmp) / split
            parts.mkdir()
            write_parts(config(["experiment=movielens", f"data.split={split}"]), parts)
            runs = results[split] = {name: [] for name in ("fastai", *RECIPES)}
            for repeat in range(args.repeats):
                order = ["fastai", *RECIPES] if repeat % 2 == 0 else [*RECIPES, "fastai"]
                for name in order:
                    started = time.perf_counter()
                    row = fastai_run(parts) if name == "fastai" else stagetune_run(name, split, out / f"{split}-{name}-{repeat}")
                    row["process_s"] = round(time.perf_counter() - started, 2)
                    runs[name].append(row)
                    print(f"{split} {name} repeat {repeat}: {row}", file=sys.stderr)
    lines = ["| split | recipe | test RMSE | valid RMSE | fit s | / fastai's fit time | process s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for split, runs in results.items():
        fastai_s = median([r["fit_s"] for r in runs["fastai"]])
        for name, rows in runs.items():
            fit_s = median([r["fit_s"] for r in rows])
            label = "fastai (dot, 50 factors, bs 64, fit_one_cycle(5, 5e-3, wd=0.1))" if name == "fastai" else f"stagetune experiment={name}"
            lines.append(
                f"| {split} | {label} | {median([r['test_rmse'] for r in rows]):.4f} | {median([r['valid_rmse'] for r in rows]):.4f} | {fit_s:.1f} | {fit_s / fastai_s:.2f} | {median([r['process_s'] for r in rows]):.1f} |"
            )
    table = "\n".join(lines)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}/results.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
