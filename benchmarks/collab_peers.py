"""``python -m benchmarks.collab_peers [--seeds 0 1 2] [--splits u1 random]``: stagetune's ratings
recipes and their ensembles against Surprise's SVD and SVD++ and fastai's collab learner, on the
same parts of ML-100k, over seeds, measured in one run.

For each split stagetune's data module makes the three parts (train, valid carved from it with
``data.seed``, test), written out with raw ids (``fastai_collab.write_parts``). Every model trains
on the same train part, once per seed, and is scored on the same valid and test parts:

* stagetune's recipes (``RECIPES``), each ``stagetune experiment=NAME seed=S`` in its own process;
* their ensembles, by ``runs/ensemble.py`` (what ``stagetune-eval RUN1 RUN2 ...`` does): the
  recipes' seed runs averaged (one number per split: it uses every seed), and
  ``movielens + movielens_svdpp`` of the same seed (one number per seed);
* Surprise's ``SVD`` and ``SVDpp`` (defaults, ``random_state=S``; ``benchmarks/surprise_recipe.py``)
  in the virtual environment ``outputs/bench/surprise-env`` (numpy < 2, as Surprise needs);
* fastai's book recipe (``benchmarks/fastai_recipe.py``, ``set_seed(S)``) in ``outputs/bench/fastai-env``.

The peers are never stagetune dependencies: ``make bench-peers`` makes both environments first.
Every process runs with ``OMP_NUM_THREADS=1``; the order of the models is reversed on odd seeds.
"fit s" is the fit alone for the peers and stagetune's ``time_s`` (fit plus the chosen checkpoint's
evaluation); an ensemble's is the sum of its members'. The table goes to stdout and
``outputs/bench/peers/<time>/results.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.cases import config
from benchmarks.fastai_collab import ENV, FASTAI_PYTHON, ROOT, fastai_run, stagetune_run, write_parts
from stagetune.runs.ensemble import evaluate_ensemble
from stagetune.runs.trained import load_trained

SURPRISE_PYTHON = ROOT / "outputs" / "bench" / "surprise-env" / "bin" / "python"
SURPRISE_RECIPE = Path(__file__).with_name("surprise_recipe.py")
RECIPES = ("movielens", "movielens_svdpp", "movielens_svdpp_side", "movielens_nn")
PAIR = ("movielens", "movielens_svdpp")  # averaged seed by seed
PEERS = ("surprise_svd", "surprise_svdpp", "fastai")
LABELS = {
    "movielens": "stagetune `experiment=movielens` (dot_bias)",
    "movielens_svdpp": "stagetune `experiment=movielens_svdpp`",
    "movielens_svdpp_side": "stagetune `experiment=movielens_svdpp_side` (SVD++ with genres, 100 factors)",
    "movielens_nn": "stagetune `experiment=movielens_nn` (collab_nn)",
    "pair": "stagetune ensemble: movielens + movielens_svdpp, same seed",
    "surprise_svd": "Surprise `SVD` (defaults)",
    "surprise_svdpp": "Surprise `SVDpp` (defaults)",
    "fastai": "fastai `collab_learner`, bs 64, `fit_one_cycle(5, 5e-3, wd=0.1)`",
}
SEEDS_AVERAGED = "_seeds"  # the key of a recipe's seed runs averaged: movielens_seeds
SPLIT_NAMES = {"u1": "u1", "random": "random 80/20 (data.seed 42)"}


def surprise_run(parts: Path, algorithm: str, seed: int) -> dict:
    cmd = [str(SURPRISE_PYTHON), str(SURPRISE_RECIPE), str(parts), algorithm, str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=False)
    if done.returncode != 0:
        raise SystemExit(f"Surprise's {algorithm} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensemble_row(runs: list[tuple[Path, dict]]) -> dict:
    """The averaged predictions of these stagetune runs, scored on valid and test."""
    members = [load_trained(path) for path, _ in runs]
    valid, test = (evaluate_ensemble(members, split).metrics for split in ("valid", "test"))
    return {"fit_s": round(sum(row["fit_s"] for _, row in runs), 2), "valid_rmse": valid["val/rmse"], "test_rmse": test["test/rmse"]}


def label(name: str) -> str:
    if name.endswith(SEEDS_AVERAGED):
        return f"stagetune ensemble: `experiment={name.removesuffix(SEEDS_AVERAGED)}`, its seeds averaged"
    return LABELS[name]


def spread(values: list[float]) -> str:
    """``mean ± sample sd`` over seeds, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    lines = [
        "| split | model | seeds | valid RMSE | test RMSE | fit s (median) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for split, rows in results.items():
        for name, runs in rows.items():
            valid, test = [r["valid_rmse"] for r in runs], [r["test_rmse"] for r in runs]
            seeds = ", ".join(str(r["seed"]) for r in runs)
            lines.append(f"| {SPLIT_NAMES.get(split, split)} | {label(name)} | {seeds} | {spread(valid)} | {spread(test)} | {np.median([r['fit_s'] for r in runs]):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.collab_peers", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=["u1", "random"])
    args = parser.parse_args(argv)
    for python, target in ((FASTAI_PYTHON, "fastai"), (SURPRISE_PYTHON, "Surprise")):
        if not python.exists():
            raise SystemExit(f"no {target} environment at {python}: make bench-peers installs it")
    torch.set_num_threads(1)
    out = ROOT / "outputs" / "bench" / "peers" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True)
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in args.splits:
            parts = Path(tmp) / split
            parts.mkdir()
            write_parts(config(["experiment=movielens", f"data.split={split}"]), parts)
            seed_sets = {name + SEEDS_AVERAGED: name for name in RECIPES}
            rows = results[split] = {name: [] for name in (*RECIPES, "pair", *seed_sets, *PEERS)}
            trained: dict[str, list[tuple[Path, dict]]] = {name: [] for name in RECIPES}
            for k, seed in enumerate(args.seeds):
                order = [*RECIPES, *PEERS] if k % 2 == 0 else [*RECIPES, *PEERS][::-1]
                for name in order:
                    if name in RECIPES:
                        run_dir = out / f"{split}-{name}-seed{seed}"
                        row = stagetune_run(name, split, run_dir, f"seed={seed}", "trainer.enable_progress_bar=false")
                        trained[name].append((run_dir, row))
                    elif name == "fastai":
                        row = fastai_run(parts, seed)
                    else:
                        row = surprise_run(parts, name.removeprefix("surprise_"), seed)
                    rows[name].append({"seed": seed, **row})
                    print(f"{split} seed {seed} {name}: {row}", file=sys.stderr, flush=True)
                    (out / "results.json").write_text(json.dumps(results, indent=1))
                rows["pair"].append({"seed": seed, **ensemble_row([trained[name][-1] for name in PAIR])})
            for key, name in seed_sets.items():
                rows[key] = [{"seed": "+".join(map(str, args.seeds)), **ensemble_row(trained[name])}]
                print(f"{split} {key}: {rows[key][0]}", file=sys.stderr, flush=True)
    text = table(results)
    print(text)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}/results.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
