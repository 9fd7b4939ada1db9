"""Pictures of a trained run: a training batch, results, the most confused classes, item biases, one user's ratings."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure

from stagetune.collab.data import RatingsDataModule
from stagetune.collab.interpret import bias_figure, ends, user_figure
from stagetune.errors import StagetuneError
from stagetune.runs.evaluation import SPLITS, evaluate
from stagetune.runs.trained import Trained
from stagetune.vision.report import Example, batch_figure, examples, most_confused, most_confused_figure, results_figure

IMAGE_VIEWS = ("batch", "results", "confused")


RATING_VIEWS = ("batch", "results", "biases")


PNG_DPI = 100


def training_batch(trained: Trained) -> list:
    """The first training batch, drawn as training draws it (the run's seed, its augmentation)."""
    pl.seed_everything(trained.cfg.seed, workers=True, verbose=False)
    trained.datamodule.setup("fit")
    return next(iter(trained.datamodule.train_dataloader()))


def image_view(trained: Trained, view: str, split: str, n: int) -> Figure:
    data = trained.datamodule
    names = trained.model.class_names
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    if view == "batch":
        x, y = training_batch(trained)
        return batch_figure([Example(x[k], int(y[k]), int(y[k])) for k in range(min(n, len(y)))], names, mean, std)
    result = evaluate(trained, split)
    if view == "results":
        shown = examples(data.splits[SPLITS[split]], result.logits, result.targets, list(range(min(n, len(result.targets)))))
        return results_figure(shown, names, mean, std)
    pairs = most_confused(result.confusion(), names)[:n]
    print(f"{'actual':<16} {'predicted':<16} {'count':>5}")
    for actual, predicted, count in pairs:
        print(f"{actual:<16} {predicted:<16} {count:>5}")
    if not pairs:
        print(f"(no example of the {split} split is confused)")
    return most_confused_figure(pairs)


def busiest_user(data: RatingsDataModule, split: str) -> int | str:
    """The raw id of the user with the most ratings in ``split``."""
    part = data.val_set if split == "valid" else data.test_set
    counts = np.bincount(part.users.numpy(), minlength=data.n_users + 1)
    counts[0] = 0
    return data.user_ids[int(counts.argmax()) - 1].item()


@torch.no_grad()
def user_results(trained: Trained, user: int | str, split: str, n: int) -> tuple[list[str], list[float], list[float]]:
    """The items ``user`` rated in ``split`` (up to ``n``, highest rating first): names, ratings, predictions."""
    data = trained.datamodule
    u = data.trained_index("user", user)
    part = data.val_set if split == "valid" else data.test_set
    mine = part.users == u
    if not bool(mine.any()):
        raise StagetuneError(f"--user {user}: no ratings in the {split} split; choose another user or --split")
    items, ratings = part.items[mine], part.ratings[mine]
    predicted = trained.model(torch.full_like(items, u).to(trained.device), items.to(trained.device)).cpu()
    order = torch.argsort(ratings, descending=True, stable=True)[:n]
    titles = data.item_names()
    return [titles[i] for i in items[order].tolist()], ratings[order].tolist(), predicted[order].tolist()


def rating_view(trained: Trained, view: str, split: str, n: int, user: int | str | None) -> Figure | None:
    data = trained.datamodule
    names = data.item_names()
    if view == "batch":
        users, items, ratings = training_batch(trained)
        print(f"{'user':>8}  {'item':>8}  rating  title")
        for u, i, r in list(zip(users.tolist(), items.tolist(), ratings.tolist()))[:n]:
            print(f"{data.user_ids[u - 1].item():>8}  {data.item_ids[i - 1].item():>8}  {r:>6.2f}  {names[i]}")
        return None
    if view == "results":
        user = busiest_user(data, split) if user is None else user
        titles, ratings, predicted = user_results(trained, user, split, n)
        print(f"user {user}, {split} split")
        print(f"{'rating':>6}  {'predicted':>9}  title")
        for title, r, p in zip(titles, ratings, predicted):
            print(f"{r:>6.2f}  {p:>9.3f}  {title}")
        return user_figure(user, titles, ratings, predicted)
    bias = getattr(trained.model, "item_bias", None)
    if bias is None:
        raise StagetuneError(f"{trained.run.path}: its model ({type(trained.model).__name__}) learns no item bias; biases needs model=dot_bias or model=svdpp")
    counts = data.item_counts()
    seen = np.flatnonzero(counts[1:] > 0) + 1  # an item training never saw keeps its initial bias
    values = bias.weight.detach().cpu().numpy()[seen, 0]
    ranked = ends(values, [names[k] for k in seen], n)
    for side in ("lowest", "highest"):
        print(f"{side} item bias:")
        for name, value in ranked[side]:
            print(f"  {value:>7.3f}  {name}")
    return bias_figure(ranked, {names[k]: int(counts[k]) for k in seen})
