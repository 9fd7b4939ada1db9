"""``stagetune-eval RUN``: evaluate a run's checkpoint on its validation or test split, again.

The metrics table is printed and written to ``RUN/eval-<split>.json``; an image classifier's
confusion matrix and top losses go beside it (``eval-<split>-confusion.png``,
``eval-<split>-top-losses.png``). A run's records are append-only: a later evaluation of the same
split never replaces an earlier one but is numbered (``eval-valid-2.json`` and its pictures), and
each file says which checkpoint it read. The numbers equal the run's own ``metrics.json``
(``valid``/``test``) for the checkpoint it chose: the split is evaluated as the run evaluated it.

Several run directories are evaluated as an ensemble (``runs/ensemble.py``: averaged ratings, or
averaged class probabilities) of runs of the same data; its record, with each member's metrics
beside the ensemble's, goes to the first run's ``eval-<split>-ensemble.json`` (numbered likewise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

from stagetune.commands.cli import one_line_errors
from stagetune.errors import StagetuneError
from stagetune.runs.ensemble import EnsembleEvaluation, evaluate_ensemble
from stagetune.runs.evaluation import SPLITS, Evaluation, evaluate
from stagetune.runs.outputs import output_file
from stagetune.runs.trained import CHECKPOINTS, Trained, load_trained
from stagetune.vision.report import confusion_figure, examples, top_losses_figure

PNG_DPI = 100


def result_stem(run: Path, split: str, kind: str = "") -> str:
    """``eval-<split>[-<kind>]``, or the first ``...-N`` (N = 2, 3, ...) whose record does not exist yet."""
    base = f"eval-{split}" + (f"-{kind}" if kind else "")
    stem, n = base, 1
    while (run / f"{stem}.json").exists():
        n += 1
        stem = f"{base}-{n}"
    return stem


def save_figure(figure: Figure, path: Path) -> None:
    """Written beside its name and linked into place: never over an existing file."""
    with output_file(path, force=False) as tmp:
        figure.savefig(tmp, dpi=PNG_DPI, format="png")


def eval_pictures(trained: Trained, result: Evaluation, stem: str, n_worst: int) -> list[Path]:
    """An image classifier's confusion matrix and top losses, in the run directory."""
    data = trained.datamodule
    names = trained.model.class_names
    worst = examples(data.splits[SPLITS[result.split]], result.logits, result.targets, result.top_losses(n_worst))
    matrix = result.confusion()
    total = int(matrix.sum())
    about = f"{result.split} split: accuracy {float(matrix.trace()) / max(total, 1):.3f} on {total} images"
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    pictures = {
        trained.run.path / f"{stem}-confusion.png": confusion_figure(matrix, names, f"confusion matrix, {about}"),
        trained.run.path / f"{stem}-top-losses.png": top_losses_figure(worst, names, mean, std, f"top losses, {about}\nprediction/actual, loss/probability"),
    }
    for path, figure in pictures.items():
        save_figure(figure, path)
    return list(pictures)


def metrics_table(columns: dict[str, dict[str, float]]) -> str:
    """One metric a line and one column per heading, without the split's prefix (``val/acc`` is ``acc``)."""
    keys = sorted(next(iter(columns.values())))
    names = [key.split("/", 1)[-1] for key in keys]
    width = max([len("metric"), *map(len, names)])
    head = f"{'metric':<{width}}" + "".join(f"  {title:>10}" for title in columns)
    lines = [f"{name:<{width}}" + "".join(f"  {metrics[key]:>10.4f}" for metrics in columns.values()) for name, key in zip(names, keys)]
    return "\n".join([head, *lines])


def record(trained: Trained, which: str, result: Evaluation, pictures: list[Path]) -> dict:
    """What ``eval-<split>.json`` holds: the checkpoint read, the metrics, and the pictures drawn."""
    return {
        "split": result.split,
        "ckpt": which,
        "checkpoint": str(trained.checkpoint),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": result.metrics,
        "examples": None if result.targets is None else len(result.targets),
        "pictures": [p.name for p in pictures],
    }


def ensemble_record(members: list[Trained], which: str, result: EnsembleEvaluation) -> dict:
    """What ``eval-<split>-ensemble.json`` holds: each member's run, checkpoint and metrics, and the ensemble's."""
    return {
        "split": result.split,
        "ckpt": which,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": result.metrics,
        "members": [
            {"run": str(trained.run.path), "checkpoint": str(trained.checkpoint), "metrics": metrics}
            for trained, metrics in zip(members, result.members)
        ],
    }


def evaluate_one(args: argparse.Namespace) -> None:
    trained = load_trained(args.run_dir[0], args.ckpt, args.device, any_file=True)
    result = evaluate(trained, args.split)
    stem = result_stem(trained.run.path, args.split)
    pictures = eval_pictures(trained, result, stem, args.top_losses) if result.is_classifier else []
    out = trained.run.path / f"{stem}.json"
    with output_file(out, force=False) as tmp:
        tmp.write_text(json.dumps(record(trained, args.ckpt, result, pictures), indent=2) + "\n")
    print(f"{trained.run.path}: checkpoint {trained.checkpoint.name}, split {args.split}")
    print(metrics_table({args.split: result.metrics}))
    print("wrote " + ", ".join(str(p) for p in [out, *pictures]), file=sys.stderr)


def evaluate_many(args: argparse.Namespace) -> None:
    if args.ckpt not in CHECKPOINTS:
        raise StagetuneError(f"--ckpt {args.ckpt}: an ensemble reads each run's best or last checkpoint")
    members = [load_trained(run, args.ckpt, args.device) for run in args.run_dir]
    result = evaluate_ensemble(members, args.split)
    first = members[0].run.path
    out = first / f"{result_stem(first, args.split, 'ensemble')}.json"
    with output_file(out, force=False) as tmp:
        tmp.write_text(json.dumps(ensemble_record(members, args.ckpt, result), indent=2) + "\n")
    for k, trained in enumerate(members, 1):
        print(f"run {k}: {trained.run.path}, checkpoint {trained.checkpoint.name}")
    print(f"split {args.split}: the {len(members)} runs alone and their ensemble (averaged predictions)")
    print(metrics_table({**{f"run {k}": m for k, m in enumerate(result.members, 1)}, "ensemble": result.metrics}))
    print(f"wrote {out}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stagetune-eval", description="Evaluate a trained run's checkpoint, or several runs' averaged predictions, on the validation or test split.")
    ap.add_argument(
        "run_dir", nargs="+",
        help="a run directory (printed at the end of `stagetune experiment=...`); several: their ensemble (averaged predictions)",
    )
    ap.add_argument("--ckpt", default="best", help="best (default), last, or (one run) the path of a checkpoint file")
    ap.add_argument("--split", default="valid", choices=list(SPLITS), help="which split (default: valid)")
    ap.add_argument("--top-losses", type=int, default=9, metavar="N", help="examples in the top-losses picture (default: 9)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return ap


@one_line_errors("stagetune-eval")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.top_losses < 1:
        raise StagetuneError(f"--top-losses {args.top_losses}: must be >= 1")
    if len(args.run_dir) == 1:
        evaluate_one(args)
    else:
        evaluate_many(args)
    return 0


if __name__ == "__main__":
    main()
