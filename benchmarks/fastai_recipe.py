"""fastai's collaborative-filtering recipe on given parts, timed: run by the fastai environment only.

``python fastai_recipe.py PARTS_DIR [SEED [refit]]``: reads ``train.tsv``, ``valid.tsv``, ``test.tsv`` (user, item,
rating; raw ids, ``-1`` for an id the training part never saw), trains fastai's own recipe
(``collab_learner(n_factors=50, y_range=(0, 5.5))``, batch 64, ``fit_one_cycle(5, 5e-3, wd=0.1)``)
on train with valid as its validation set, and prints one JSON line: fit seconds, valid and test
RMSE. With ``SEED``, fastai's ``set_seed`` fixes the initial weights and the batches' order first.
With ``refit``, the recipe trains on train + valid (valid ratings with an id training never saw left
out; the book's recipe has a fixed length, so valid chooses nothing) and valid RMSE is that of a
first fit on train alone. The JSON also gives the final fit's CPU seconds (``cpu_s``).
It imports fastai, never stagetune (fastai is not a stagetune dependency).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.collab import TabularCollab, collab_learner
from fastai.tabular.all import Categorify, IndexSplitter, TransformBlock, range_of, set_seed


def read(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", names=["user", "item", "rating"])
    return df.astype({"user": str, "item": str, "rating": "float32"})


def fit(train: pd.DataFrame, valid: pd.DataFrame, parts: Path):
    """fastai's book recipe on ``train`` (``valid`` its validation set); the learner, wall and CPU seconds."""
    df = pd.concat([train, valid], ignore_index=True)
    splits = IndexSplitter(list(range(len(train), len(df))))(range_of(df))
    # Categorify's vocabulary comes from the training split only, as stagetune's does.
    to = TabularCollab(df, [Categorify], cat_names=["user", "item"], y_names=["rating"], y_block=TransformBlock(), splits=splits)
    dls = to.dataloaders(path=str(parts), bs=64)
    learn = collab_learner(dls, n_factors=50, y_range=(0, 5.5))
    with learn.no_bar(), learn.no_logging():
        started, cpu = time.perf_counter(), time.process_time()
        learn.fit_one_cycle(5, 5e-3, wd=0.1)
        return learn, time.perf_counter() - started, time.process_time() - cpu


def rmse(learn, part: pd.DataFrame) -> float:
    with learn.no_bar(), learn.no_logging():
        preds, _ = learn.get_preds(dl=learn.dls.test_dl(part))
    return float(torch.sqrt(torch.mean((preds.view(-1) - torch.tensor(part["rating"].values)) ** 2)))


def main(parts: Path, seed: int | None = None, refit: bool = False) -> None:
    if seed is not None:
        set_seed(seed)
    train, valid, test = (read(parts / f"{name}.tsv") for name in ("train", "valid", "test"))
    learn, fit_s, cpu_s = fit(train, valid, parts)
    scores = {"valid_rmse": rmse(learn, valid), "test_rmse": rmse(learn, test)}
    if refit:
        if seed is not None:
            set_seed(seed)
        known = valid[(valid["user"] != "-1") & (valid["item"] != "-1")]
        learn, fit_s, cpu_s = fit(pd.concat([train, known], ignore_index=True), valid, parts)
        scores["test_rmse"] = rmse(learn, test)
    print(json.dumps({"fit_s": round(fit_s, 2), "cpu_s": round(cpu_s, 2), **scores}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None, len(sys.argv) > 3 and sys.argv[3] == "refit")
