"""What stagetune-eval keeps of an evaluation: the result files' names, pictures and the JSON record of one run or an ensemble."""

from __future__ import annotations

import datetime
from pathlib import Path

from matplotlib.figure import Figure

from stagetune.runs.ensemble import EnsembleEvaluation
from stagetune.runs.evaluation import SPLITS, Evaluation
from stagetune.runs.outputs import output_file
from stagetune.runs.trained import Trained
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


def record(trained: Trained, which: str, result: Evaluation, pictures: list[Path]) -> dict:
    """What ``eval-<split>.json`` holds: the checkpoint read, the metrics, and the pictures drawn."""
    return {
        "split": result.split,
        "ckpt": which,
        "checkpoint": trained.run.relative(trained.checkpoint),
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
            {"run": str(trained.run.path), "checkpoint": str(trained.checkpoint), "metrics": metrics} for trained, metrics in zip(members, result.members)
        ],
    }
