"""``stagetune-show RUN VIEW``: fastai's looks at a trained run, as pictures in the run directory.

Image runs: ``batch`` (a training batch after its transforms, with labels: ``show_batch``),
``results`` (the first examples of a split, prediction against truth with the loss:
``show_results``), ``confused`` (the most-confused class pairs: ``most_confused``, a table printed
and a picture). Rating runs: ``batch`` (a training batch as a table, no picture), ``results`` (one
user's ratings beside the model's predictions) and ``biases`` (the items with the lowest and the
highest learned bias). Each picture is ``RUN/show-<view>.png`` unless ``--out`` names another
file; an existing file is never replaced without ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stagetune.collab.data import RatingsDataModule
from stagetune.errors import StagetuneError
from stagetune.failures import console_command
from stagetune.runs.evaluation import SPLITS
from stagetune.runs.outputs import check_output, output_file
from stagetune.runs.trained import load_trained
from stagetune.runs.views import IMAGE_VIEWS, PNG_DPI, RATING_VIEWS, image_view, rating_view


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stagetune-show", description="Pictures of a trained run: its inputs, its results, its mistakes.")
    ap.add_argument("run_dir", help="a run directory (printed at the end of `stagetune experiment=...`)")
    ap.add_argument("view", choices=sorted({*IMAGE_VIEWS, *RATING_VIEWS}), help="image runs: batch, results, confused; rating runs: batch, results, biases")
    ap.add_argument("-n", type=int, default=9, help="images, class pairs or items shown (default: 9)")
    ap.add_argument("--split", default="valid", choices=list(SPLITS), help="the split results and confused read (default: valid)")
    ap.add_argument("--user", help="rating runs, results: this user id as the data writes it (default: the one with most ratings in the split)")
    ap.add_argument("--ckpt", default="best", help="best (default), last, or the path of a checkpoint file")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", help="the PNG to write (default: RUN/show-VIEW.png); never an existing file")
    ap.add_argument("--force", action="store_true", help="replace the PNG if it exists")
    return ap


@console_command("stagetune-show")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.n < 1:
        raise StagetuneError(f"-n {args.n}: must be >= 1")
    default = Path(args.run_dir) / f"show-{args.view}.png"
    out = check_output(Path(args.out) if args.out else default, args.force, default.name)
    trained = load_trained(args.run_dir, args.ckpt, args.device, any_file=True)
    ratings = isinstance(trained.datamodule, RatingsDataModule)
    views = RATING_VIEWS if ratings else IMAGE_VIEWS
    if args.view not in views:
        kind = "a rating" if ratings else "an image"
        raise StagetuneError(f"{args.view}: {trained.run.path} is {kind} run; its views are {', '.join(views)}")
    if args.user is not None and not (ratings and args.view == "results"):
        raise StagetuneError("--user: only for the results view of a rating run")
    figure = rating_view(trained, args.view, args.split, args.n, args.user) if ratings else image_view(trained, args.view, args.split, args.n)
    if figure is not None:
        with output_file(out, args.force) as tmp:
            figure.savefig(tmp, dpi=PNG_DPI, format="png")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
