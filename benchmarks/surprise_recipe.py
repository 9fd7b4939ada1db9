"""Surprise's SVD or SVD++ on given parts, timed: run by the Surprise environment only.

``python surprise_recipe.py PARTS_DIR ALGORITHM SEED``: reads ``train.tsv``, ``valid.tsv``,
``test.tsv`` (user, item, rating; raw ids, ``-1`` for an id the training part never saw), fits
``surprise.SVD`` or ``surprise.SVDpp`` with Surprise's defaults (the settings its README's
MovieLens table uses) and ``random_state=SEED`` on train, and prints one JSON line: fit seconds,
valid and test RMSE. An id training never saw is predicted as Surprise does (its known biases and
the global mean). It imports Surprise, never stagetune (Surprise needs numpy < 2; stagetune does not).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from surprise import SVD, Dataset, Reader, SVDpp

ALGORITHMS = {"svd": SVD, "svdpp": SVDpp}


def read(path: Path) -> list[tuple[str, str, float]]:
    """(user, item, rating) rows, ids as strings: Surprise's raw ids."""
    rows = (line.split("\t") for line in path.read_text().splitlines() if line)
    return [(user, item, float(rating)) for user, item, rating in rows]


def main(parts: Path, algorithm: str, seed: int) -> None:
    reader = Reader(line_format="user item rating", sep="\t", rating_scale=(1, 5))
    trainset = Dataset.load_from_file(str(parts / "train.tsv"), reader).build_full_trainset()
    valid, test = read(parts / "valid.tsv"), read(parts / "test.tsv")
    algo = ALGORITHMS[algorithm](random_state=seed)
    started = time.perf_counter()
    algo.fit(trainset)
    fit_s = time.perf_counter() - started

    def rmse(part: list[tuple[str, str, float]]) -> float:
        err = np.array([algo.predict(user, item).est - rating for user, item, rating in part])
        return float(np.sqrt(np.mean(err**2)))

    print(json.dumps({"fit_s": round(fit_s, 2), "valid_rmse": rmse(valid), "test_rmse": rmse(test)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
