"""``stagetune-recommend``: what a rating run's model suggests to a user, and which items it finds alike.

Users and items are named by the ids the data used (MovieLens's ``userId``/``movieId``; a ratings
file's own ids, text included; 0-based for synthetic ratings). Recommendations are the items with the highest predicted rating among
those the user has not rated (neither in the training nor the validation split) and that training
saw at least once: an item nobody rated has only its initial factors. ``--similar`` ranks items by
the cosine similarity of their learned vectors (the factors plus any side embeddings).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from stagetune.collab.data import UNKNOWN, RatingsDataModule
from stagetune.errors import StagetuneError
from stagetune.commands.cli import one_line_errors
from stagetune.runs.trained import Trained, load_trained


@dataclass
class Ranked:
    item: int | str
    title: str
    score: float


def ratings_data(trained: Trained) -> RatingsDataModule:
    data = trained.datamodule
    if not isinstance(data, RatingsDataModule):
        raise StagetuneError(
            f"{trained.run.path} is a {trained.cfg.get('experiment', '?')} run, not a rating model "
            "(stagetune-predict uses image runs)"
        )
    return data


def _ranked(data: RatingsDataModule, indices: torch.Tensor, scores: torch.Tensor) -> list[Ranked]:
    titles = data.item_titles
    return [
        Ranked(data.item_ids[i - 1].item(), titles[i] if titles else "", float(s))
        for i, s in zip(indices.tolist(), scores.tolist())
    ]


@torch.no_grad()
def recommend(trained: Trained, user: int | str, k: int = 10) -> list[Ranked]:
    """The ``k`` items with the highest predicted rating that ``user`` has not rated."""
    data = ratings_data(trained)
    u = data.trained_index("user", user)
    candidates = torch.ones(data.n_items + 1, dtype=torch.bool)
    candidates[UNKNOWN] = False
    candidates[torch.as_tensor(data.item_counts() == 0)] = False
    for split in data.parts():
        candidates[split.items[split.users == u]] = False
    items = candidates.nonzero().squeeze(1)
    users = torch.full_like(items, u)
    predicted = trained.model(users.to(trained.device), items.to(trained.device)).cpu()
    scores, order = predicted.topk(min(k, len(items)))
    return _ranked(data, items[order], scores)


@torch.no_grad()
def similar(trained: Trained, item: int | str, k: int = 10) -> list[Ranked]:
    """The ``k`` items whose learned vectors (factors plus side embeddings) point the most the same way as ``item``'s."""
    data = ratings_data(trained)
    i = data.trained_index("item", item)
    factors = trained.model.all_item_vectors().cpu()
    cosine = F.cosine_similarity(factors, factors[i].unsqueeze(0), dim=1)
    seen = torch.as_tensor(data.item_counts() > 0)
    seen[i] = False
    items = seen.nonzero().squeeze(1)
    scores, order = cosine[items].topk(min(k, len(items)))
    return _ranked(data, items[order], scores)


def print_ranked(rows: list[Ranked], heading: str, score_name: str) -> None:
    """A table of items; the title column only when the data had titles."""
    print(heading)
    width = max(len(r.title) for r in rows) if rows else 0
    title = f"{'title':<{width}}  " if width else ""
    print(f"{'item':>8}  {title}{score_name}")
    for r in rows:
        title = f"{r.title:<{width}}  " if width else ""
        print(f"{r.item:>8}  {title}{r.score:.3f}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stagetune-recommend", description="Recommend items with a trained rating model.")
    ap.add_argument("run_dir", help="the run directory of a rating experiment (ratings_synthetic, movielens, ...)")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="recommend to this user id, as the data writes it (a number or text)")
    who.add_argument("--similar", metavar="ITEM", help="list the items nearest to this item id, as the data writes it")
    ap.add_argument("-k", type=int, default=10, help="how many items (default: 10)")
    ap.add_argument("--ckpt", default="best", choices=["best", "last"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return ap


@one_line_errors("stagetune-recommend")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.k < 1:
        raise StagetuneError(f"-k {args.k}: must be >= 1")
    trained = load_trained(args.run_dir, args.ckpt, args.device)
    if args.user is not None:
        print_ranked(recommend(trained, args.user, args.k), f"top {args.k} for user {args.user}", "predicted rating")
    else:
        print_ranked(similar(trained, args.similar, args.k), f"nearest to item {args.similar}", "cosine")
    return 0


if __name__ == "__main__":
    main()
