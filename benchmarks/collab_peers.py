"""``python -m benchmarks.collab_peers [--seeds 0 1 2] [--splits u1 ... random] [--split-seeds 0 1 2] [--models ...]``:
stagetune's ratings recipes against Surprise's SVD, SVD++ and KNNBaseline and fastai's collab
learner, on the same parts of ML-100k, under one protocol, measured in one run.

For each split stagetune's data module makes the three parts (train, valid carved from it with
``data.split_seed``, test), written out with raw ids (``fastai_collab.write_parts``); a random
80/20 split is made once per ``--split-seeds`` seed. Every model sees the same parts:

* stagetune's recipes (``RECIPES``), ``stagetune experiment=NAME seed=S refit=true`` in a process
  of its own: valid chooses the epoch, a fresh model trains on train + valid, test is read once;
* Surprise's ``SVD``, ``SVDpp`` with their defaults on train (``surprise_recipe.py``), and
  ``SVD``, ``SVDpp``, ``KNNBaseline`` tuned: a small grid fitted on train and chosen on valid,
  then refitted on train + valid and tested once;
* fastai's book recipe (``fastai_recipe.py``, ``set_seed(S)``), refitted on train + valid too.

Each row states its protocol. Valid RMSE is always the fit on train alone (what chooses); test
RMSE the final model's. "fit CPU s" is the CPU time of one fit on train (stagetune's first fit with
its evaluation; the peers' fit alone), the figure to set side by side. Random-split rows are the
mean ± sample sd over the split seeds (and the model seeds); "u1-u5 mean" rows average the five
folds' test RMSE. The peers are never stagetune dependencies: ``make bench-peers`` makes their
environments first. Every process runs with ``OMP_NUM_THREADS=1``; the order of the models is
reversed on odd seeds. The table goes to stdout and ``outputs/bench/peers/<time>/results.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.cases import config
from benchmarks.fastai_collab import ENV, FASTAI_PYTHON, ROOT, fastai_run, stagetune_run, write_parts

SURPRISE_PYTHON = ROOT / "outputs" / "bench" / "surprise-env" / "bin" / "python"
SURPRISE_RECIPE = Path(__file__).with_name("surprise_recipe.py")
RECIPES = ("movielens", "movielens_svdpp", "movielens_svdpp_side", "movielens_nn")
SURPRISE = ("surprise_svd", "surprise_svdpp", "surprise_svd_tuned", "surprise_svdpp_tuned", "surprise_knnbaseline_tuned")
PEERS = (*SURPRISE, "fastai")
FOLDS = ("u1", "u2", "u3", "u4", "u5")
REFIT = "chosen on valid, refit on train + valid"
LABELS = {
    "movielens": ("stagetune `experiment=movielens` (dot_bias)", REFIT),
    "movielens_svdpp": ("stagetune `experiment=movielens_svdpp`", REFIT),
    "movielens_svdpp_side": ("stagetune `experiment=movielens_svdpp_side` = `movielens_best` (SVD++ with genres, 100 factors)", REFIT),
    "movielens_nn": ("stagetune `experiment=movielens_nn` (collab_nn)", REFIT),
    "surprise_svd": ("Surprise `SVD`", "defaults, train only"),
    "surprise_svdpp": ("Surprise `SVDpp`", "defaults, train only"),
    "surprise_svd_tuned": ("Surprise `SVD`", "grid chosen on valid, refit on train + valid"),
    "surprise_svdpp_tuned": ("Surprise `SVDpp`", "grid chosen on valid, refit on train + valid"),
    "surprise_knnbaseline_tuned": ("Surprise `KNNBaseline`", "grid chosen on valid, refit on train + valid"),
    "fastai": ("fastai `collab_learner`, bs 64, `fit_one_cycle(5, 5e-3, wd=0.1)`", "fixed recipe, refit on train + valid"),
}


def surprise_run(parts: Path, name: str, seed: int) -> dict:
    algorithm = name.removeprefix("surprise_").removesuffix("_tuned")
    cmd = [str(SURPRISE_PYTHON), str(SURPRISE_RECIPE), str(parts), algorithm, str(seed), *(["tuned"] if name.endswith("_tuned") else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=False)
    if done.returncode != 0:
        raise SystemExit(f"Surprise's {algorithm} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    """``mean ± sample sd``, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def split_label(split: str, runs: list[dict]) -> str:
    if split != "random":
        return split
    return f"random 80/20, split seeds {', '.join(sorted({str(r['split_seed']) for r in runs}))}"


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    """One row per split and model; a ``u1-u5 mean`` row per model that ran on all five folds."""
    lines = [
        "| split | model | protocol | runs | valid RMSE | test RMSE | fit CPU s (median) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for split, rows in results.items():
        for name, runs in rows.items():
            if not runs:
                continue
            model, protocol = LABELS[name]
            valid, test = [r["valid_rmse"] for r in runs], [r["test_rmse"] for r in runs]
            cpu = np.median([r["cpu_s"] for r in runs])
            lines.append(f"| {split_label(split, runs)} | {model} | {protocol} | {len(runs)} | {spread(valid)} | {spread(test)} | {cpu:.1f} |")
    for name in LABELS:
        folds = [results.get(fold, {}).get(name) for fold in FOLDS]
        if all(folds):
            model, protocol = LABELS[name]
            mean = lambda key: np.mean([np.mean([r[key] for r in runs]) for runs in folds])  # noqa: E731
            lines.append(
                f"| u1-u5 mean | {model} | {protocol} | {sum(map(len, folds))} | {mean('valid_rmse'):.4f} | {mean('test_rmse'):.4f} | {np.median([r['cpu_s'] for runs in folds for r in runs]):.1f} |"
            )
    return "\n".join(lines)


def machine() -> str:
    """The machine and its load average, for the table's note: the numbers are CPU seconds on it."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.collab_peers", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=[*FOLDS, "random"])
    parser.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=[*RECIPES, *PEERS], choices=[*RECIPES, *PEERS])
    args = parser.parse_args(argv)
    needs = [(FASTAI_PYTHON, "fastai", "fastai" in args.models), (SURPRISE_PYTHON, "Surprise", any(m in SURPRISE for m in args.models))]
    for python, target, needed in needs:
        if needed and not python.exists():
            raise SystemExit(f"no {target} environment at {python}: make bench-peers installs it")
    torch.set_num_threads(1)
    out = ROOT / "outputs" / "bench" / "peers" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True)
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split in args.splits:
            rows = results[split] = {name: [] for name in args.models}
            for split_seed in args.split_seeds if split == "random" else [42]:
                parts = Path(tmp) / f"{split}-{split_seed}"
                parts.mkdir()
                write_parts(config(["experiment=movielens", f"data.split={split}", f"data.split_seed={split_seed}"]), parts)
                for k, seed in enumerate(args.seeds):
                    for name in args.models if k % 2 == 0 else args.models[::-1]:
                        if name in RECIPES:
                            run_dir = out / f"{split}-{split_seed}-{name}-seed{seed}"
                            overrides = (f"seed={seed}", f"data.split_seed={split_seed}", "refit=true", "trainer.enable_progress_bar=false")
                            row = stagetune_run(name, split, run_dir, *overrides)
                        elif name == "fastai":
                            row = fastai_run(parts, seed, refit=True)
                        else:
                            row = surprise_run(parts, name, seed)
                        rows[name].append({"seed": seed, "split_seed": split_seed, **row})
                        print(f"{split} split seed {split_seed} seed {seed} {name}: {row}", file=sys.stderr, flush=True)
                        (out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results) + f"\n\nMachine: {machine()}; every process OMP_NUM_THREADS=1.\n"
    print(text)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}/results.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
