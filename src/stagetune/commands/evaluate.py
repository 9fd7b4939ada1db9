"""``stagetune-eval RUN``: evaluate a run's checkpoint on its validation or test split, again.

The metrics table is printed and written to ``RUN/eval-<split>.json``; an image classifier's
confusion matrix and top losses go beside it (``eval-<split>-confusion.png``,
``eval-<split>-top-losses.png``). A run's records are append-only: a later evaluation of the same
split never replaces an earlier one but is numbered (``eval-valid-2.json`` and its pictures), and
each file says which checkpoint it read. The numbers equal the run's own ``metrics.json``
(``valid``/``test``) for the checkpoint it chose: the split is evaluated as the run evaluated it.
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
from stagetune.runs.evaluation import SPLITS, Evaluation, evaluate
from stagetune.runs.outputs import output_file
from stagetune.runs.trained import Trained, load_trained
from stagetune.vision.report import confusion_figure, examples, top_losses_figure

PNG_DPI = 100


def result_stem(run: Path, split: str) -> str:
    """``eval-<split>``, or the first ``eval-<split>-N`` (N = 2, 3, ...) whose record does not exist yet."""
    stem, n = f"eval-{split}", 1
    while (run / f"{stem}.json").exists():
        n += 1
        stem = f"eval-{split}-{n}"
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


def metrics_table(result: Evaluation) -> str:
    """One metric a line, without the split's prefix (``val/acc`` is ``acc``)."""
    rows = {key.split("/", 1)[-1]: value for key, value in sorted(result.metrics.items())}
    width = max([len("metric"), *map(len, rows)])
    return "\n".join([f"{'metric':<{width}}  {result.split:>10}", *(f"{name:<{width}}  {value:>10.4f}" for name, value in rows.items())])


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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stagetune-eval", description="Evaluate a trained run's checkpoint on its validation or test split.")
    ap.add_argument("run_dir", help="a run directory (printed at the end of `stagetune experiment=...`)")
    ap.add_argument("--ckpt", default="best", help="best (default), last, or the path of a checkpoint file")
    ap.add_argument("--split", default="valid", choices=list(SPLITS), help="which split (default: valid)")
    ap.add_argument("--top-losses", type=int, default=9, metavar="N", help="examples in the top-losses picture (default: 9)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return ap


@one_line_errors("stagetune-eval")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.top_losses < 1:
        raise StagetuneError(f"--top-losses {args.top_losses}: must be >= 1")
    trained = load_trained(args.run_dir, args.ckpt, args.device, any_file=True)
    result = evaluate(trained, args.split)
    stem = result_stem(trained.run.path, args.split)
    pictures = eval_pictures(trained, result, stem, args.top_losses) if result.is_classifier else []
    out = trained.run.path / f"{stem}.json"
    with output_file(out, force=False) as tmp:
        tmp.write_text(json.dumps(record(trained, args.ckpt, result, pictures), indent=2) + "\n")
    print(f"{trained.run.path}: checkpoint {trained.checkpoint.name}, split {args.split}")
    print(metrics_table(result))
    print("wrote " + ", ".join(str(p) for p in [out, *pictures]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
