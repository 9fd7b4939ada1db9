"""Entry point of the extra ranks that a stagetune rank 0 starts for a DDP run.

``python -m stagetune.commands.worker RUN_DIR [CKPT]`` reads the resolved config that rank 0 wrote into
RUN_DIR and joins its process group (from the environment rank 0 set). It writes nothing itself, and
builds the config only if it is the file rank 0 vouched for (its SHA-256 in the environment) or,
started by hand, if every target in it is allowlisted. Every rank stops together (a pruned trial,
a diverged loss); rank 0 reports why, so a started rank stops with the code and no line.
"""

import sys

from stagetune.config import validate
from stagetune.engine import launch
from stagetune.failures import task_wrapper
from stagetune.runs.run import fit_run
from stagetune.runs.rundir import RunDir
from stagetune.runs.trained import without_start_weights


@task_wrapper("stagetune-worker", quiet=lambda: launch.global_rank() != 0)
def main(argv: list[str]) -> None:
    run = RunDir(argv[0])
    cfg = validate(run.rank_config())
    ckpt_path = argv[1] if len(argv) > 1 else None
    fit_run(without_start_weights(cfg) if ckpt_path else cfg, run, ckpt_path)


if __name__ == "__main__":
    main(sys.argv[1:])
