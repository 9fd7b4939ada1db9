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
import json
import sys

from stagetune.errors import StagetuneError
from stagetune.failures import console_command
from stagetune.runs.ensemble import evaluate_ensemble
from stagetune.runs.evaluation import SPLITS, evaluate
from stagetune.runs.evaluation_records import ensemble_record, eval_pictures, record, result_stem
from stagetune.runs.outputs import output_file
from stagetune.runs.trained import CHECKPOINTS, load_trained


def metrics_table(columns: dict[str, dict[str, float]]) -> str:
    """One metric a line and one column per heading, without the split's prefix (``val/acc`` is ``acc``)."""
    keys = sorted(next(iter(columns.values())))
    names = [key.split("/", 1)[-1] for key in keys]
    width = max([len("metric"), *map(len, names)])
    head = f"{'metric':<{width}}" + "".join(f"  {title:>10}" for title in columns)
    lines = [f"{name:<{width}}" + "".join(f"  {metrics[key]:>10.4f}" for metrics in columns.values()) for name, key in zip(names, keys)]
    return "\n".join([head, *lines])


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
    ap = argparse.ArgumentParser(
        prog="stagetune-eval", description="Evaluate a trained run's checkpoint, or several runs' averaged predictions, on the validation or test split."
    )
    ap.add_argument(
        "run_dir",
        nargs="+",
        help="a run directory (printed at the end of `stagetune experiment=...`); several: their ensemble (averaged predictions)",
    )
    ap.add_argument("--ckpt", default="best", help="best (default), last, or (one run) the path of a checkpoint file")
    ap.add_argument("--split", default="valid", choices=list(SPLITS), help="which split (default: valid)")
    ap.add_argument("--top-losses", type=int, default=9, metavar="N", help="examples in the top-losses picture (default: 9)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return ap


@console_command("stagetune-eval")
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
