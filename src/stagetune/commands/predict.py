"""``stagetune-predict``: classify image files with a trained run's model.

Files are prepared by the run's own datamodule (``eval_transform``: the size, normalisation and,
for digits, the grey 8x8 path), predicted in batches, and written to a CSV: path, predicted class,
its probability, and the top-k classes. ``--tta`` averages the probabilities of each image and its
horizontal mirror (fastai's ``tta``, without its random crops). ``--ensemble RUN`` (repeatable)
averages the probabilities of the run's model with those of other runs of the same data
(``runs/ensemble.py`` checks it), each file prepared once by the first run's transform. A file
that cannot be read is listed and skipped; the others are still predicted.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from stagetune.errors import DataError
from stagetune.failures import console_command
from stagetune.runs.ensemble import check_same_data
from stagetune.runs.outputs import check_output, output_file
from stagetune.runs.predict import Prediction, image_files, image_transform, predict
from stagetune.runs.trained import load_trained


def write_csv(predictions: Sequence[Prediction], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "prediction", "probability", "top_k"])
        for p in predictions:
            top = " ".join(f"{label}:{prob:.4f}" for label, prob in p.top)
            writer.writerow([p.path, p.label, f"{p.probability:.6f}", top])


def print_table(predictions: Sequence[Prediction], rows: int = 20) -> None:
    width = min(60, max(len(p.path) for p in predictions))
    print(f"{'path':<{width}}  {'prediction':<12} probability")
    for p in predictions[:rows]:
        shown = p.path if len(p.path) <= width else "..." + p.path[-(width - 3) :]
        print(f"{shown:<{width}}  {p.label:<12} {p.probability:.4f}")
    if len(predictions) > rows:
        print(f"... and {len(predictions) - rows} more")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="stagetune-predict", description="Classify image files with a trained run's model.")
    ap.add_argument("run_dir", help="a run directory (printed at the end of `stagetune experiment=...`)")
    ap.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    ap.add_argument("--ckpt", default="best", choices=["best", "last"], help="which checkpoint (default: best)")
    ap.add_argument("--tta", action="store_true", help="average over each image and its horizontal mirror")
    ap.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="RUN",
        help="another run of the same data whose probabilities are averaged in (repeatable)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--top-k", type=int, default=3, help="classes listed per image in the CSV (default: 3)")
    ap.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv); never an existing file")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists, even inside a run's records")
    return ap


@console_command("stagetune-predict")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = check_output(Path(args.out), args.force, "predictions.csv")
    trained = load_trained(args.run_dir, args.ckpt, args.device)
    transform = image_transform(trained)
    ensemble = [load_trained(run, args.ckpt, args.device) for run in args.ensemble]
    if ensemble:
        check_same_data([trained, *ensemble])
    files = image_files(args.images)
    predictions, skipped = predict(trained, files, transform, args.batch_size, args.tta, args.top_k, ensemble)
    for path, reason in skipped:
        print(f"stagetune-predict: skipped unreadable image {path} ({reason})", file=sys.stderr)
    if not predictions:
        raise DataError(f"none of the {len(files)} file(s) could be read as an image")
    with output_file(out, args.force) as tmp:
        write_csv(predictions, tmp)
    print_table(predictions)
    print(f"{len(predictions)} predicted, {len(skipped)} skipped; written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
