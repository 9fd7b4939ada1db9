"""Surprise's SVD, SVD++ or KNNBaseline on given parts, timed: run by the Surprise environment only.

``python surprise_recipe.py PARTS_DIR ALGORITHM SEED [tuned]``: reads ``train.tsv``, ``valid.tsv``,
``test.tsv`` (user, item, rating; raw ids, ``-1`` for an id the training part never saw). Without
``tuned``: Surprise's defaults (the settings its README's MovieLens table uses) and
``random_state=SEED``, fitted on train. With ``tuned``: every setting of the algorithm's small grid
(``GRIDS``) fitted on train and scored on valid; the best on valid is fitted again on train + valid
(the refit protocol of ``GridSearchCV(refit=True)``; valid ratings with an id training never saw
are left out) and tested once. Prints one JSON line: the fit's wall and CPU seconds (the final
fit's; ``grid_cpu_s`` the whole grid's), valid RMSE (the fit on train), test RMSE, the chosen
settings. An unseen id is predicted as Surprise does (its known biases and the global mean). It
imports Surprise, never stagetune (Surprise needs numpy < 2; stagetune does not).
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from surprise import SVD, Dataset, KNNBaseline, Reader, SVDpp

ALGORITHMS = {"svd": SVD, "svdpp": SVDpp, "knnbaseline": KNNBaseline}
GRIDS = {
    "svd": {"n_factors": [50, 100], "n_epochs": [20, 40], "lr_all": [0.005, 0.01], "reg_all": [0.05, 0.1]},
    "svdpp": {"n_epochs": [20, 30], "lr_all": [0.005, 0.007], "reg_all": [0.02, 0.05]},
    "knnbaseline": {"k": [20, 40], "sim_options": [{"name": "pearson_baseline", "user_based": False}, {"name": "pearson_baseline", "user_based": True}]},
}


def read(path: Path) -> list[tuple[str, str, float]]:
    """(user, item, rating) rows, ids as strings: Surprise's raw ids."""
    rows = (line.split("\t") for line in path.read_text().splitlines() if line)
    return [(user, item, float(rating)) for user, item, rating in rows]


def trainset(rows: list[tuple[str, str, float]]):
    """Surprise's training set of these rows (through a TSV file, as Surprise reads them)."""
    with tempfile.NamedTemporaryFile("w", suffix=".tsv") as f:
        f.write("".join(f"{user}\t{item}\t{rating:g}\n" for user, item, rating in rows))
        f.flush()
        return Dataset.load_from_file(f.name, Reader(line_format="user item rating", sep="\t", rating_scale=(1, 5))).build_full_trainset()


def fit(algorithm: str, rows, seed: int, settings: dict):
    extra = {"verbose": False} if algorithm == "knnbaseline" else {"random_state": seed}
    algo = ALGORITHMS[algorithm](**settings, **extra)
    started, cpu = time.perf_counter(), time.process_time()
    algo.fit(trainset(rows))
    return algo, time.perf_counter() - started, time.process_time() - cpu


def rmse(algo, part: list[tuple[str, str, float]]) -> float:
    err = np.array([algo.predict(user, item).est - rating for user, item, rating in part])
    return float(np.sqrt(np.mean(err**2)))


def main(parts: Path, algorithm: str, seed: int, tuned: bool) -> None:
    train, valid, test = (read(parts / f"{name}.tsv") for name in ("train", "valid", "test"))
    if not tuned:
        algo, fit_s, cpu_s = fit(algorithm, train, seed, {})
        print(json.dumps({"fit_s": round(fit_s, 2), "cpu_s": round(cpu_s, 2), "valid_rmse": rmse(algo, valid), "test_rmse": rmse(algo, test)}))
        return
    grid, grid_cpu = GRIDS[algorithm], 0.0
    scored = []
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        algo, _, cpu_s = fit(algorithm, train, seed, settings)
        grid_cpu += cpu_s
        scored.append((rmse(algo, valid), settings))
    valid_rmse, chosen = min(scored, key=lambda s: s[0])
    known = [row for row in valid if "-1" not in row[:2]]
    algo, fit_s, cpu_s = fit(algorithm, train + known, seed, chosen)
    print(
        json.dumps(
            {
                "fit_s": round(fit_s, 2),
                "cpu_s": round(cpu_s, 2),
                "grid_cpu_s": round(grid_cpu, 2),
                "valid_rmse": valid_rmse,
                "test_rmse": rmse(algo, test),
                "chosen": chosen,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), len(sys.argv) > 4 and sys.argv[4] == "tuned")
