"""``stagetune-report SWEEP_DIR``: (re)write the summary of a finished sweep (and of its Optuna study).

``--ensemble`` adds ``ensembles.md``: each recipe's seeds averaged on valid (``runs/sweep_ensembles.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stagetune.errors import StagetuneError
from stagetune.failures import console_command
from stagetune.runs.sweep_ensembles import write_ensembles
from stagetune.runs.sweep_report import Report, job_dirs
from stagetune.sweeps.report import write_study_report


@console_command("stagetune-report")
def main(argv: list[str] | None = None) -> int:
    """``stagetune-report SWEEP_DIR``: (re)write the summary of a finished sweep."""
    parser = argparse.ArgumentParser(prog="stagetune-report", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory, e.g. outputs/ratings_synthetic/multirun/<time>")
    parser.add_argument("--ensemble", action="store_true", help="also average each recipe's seeds (their best checkpoints) on valid: ensembles.md")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where --ensemble evaluates (default: cpu)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir() or not job_dirs(args.sweep_dir):
        raise StagetuneError(f"{args.sweep_dir} holds no run directories")
    report = Report(args.sweep_dir)
    paths = report.write()
    print(report.markdown())
    study = write_study_report(args.sweep_dir)
    if study is not None:
        print(study[0].markdown())
        paths += study[1]
    if args.ensemble:
        text, path = write_ensembles(report, args.device)
        print(text)
        paths.append(path)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
