"""``stagetune-recommend``: what a rating run's model suggests to a user, and which items it finds alike.

Users and items are named by the ids the data used (MovieLens's ``userId``/``movieId``; a ratings
file's own ids, text included; 0-based for synthetic ratings). Recommendations are the items with
the highest predicted rating among
those the user has not rated (neither in the training nor the validation split) and that training
saw at least once: an item nobody rated has only its initial factors. ``--similar`` ranks items by
the cosine similarity of their learned vectors (the factors plus any side embeddings).
"""

from __future__ import annotations

import argparse

from stagetune.errors import StagetuneError
from stagetune.failures import console_command
from stagetune.runs.recommend import Ranked, recommend, similar
from stagetune.runs.trained import load_trained


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


@console_command("stagetune-recommend")
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
