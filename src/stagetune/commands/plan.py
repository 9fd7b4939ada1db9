"""``stagetune-plan [--model] [key=value ...]``: the composed config's plan as a table, before anything trains.

Each stage's epochs and schedule, and per layer group its parameter count, whether it trains, its
learning rate (after slices and ``plan.lr``) and weight decay (:mod:`stagetune.engine.preview`).
The layer groups are the model's: the model is built on PyTorch's meta device with its nested
``_target_`` nodes (pretrained weights, a source model) left out, so nothing is read, trained or
allocated; ``--model`` builds it exactly as a run does (weights included). Neither reads a batch.
"""

from __future__ import annotations

import argparse

from stagetune.failures import console_command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stagetune-plan", description="Print the plan of the composed config: stages, epochs, and each layer group's params, LR and wd."
    )
    p.add_argument("--model", action="store_true", help="build the model as a run does (weights included), not its structure alone")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for stagetune (experiment=digits_transfer plan.lr=1e-3 ...)")
    return p


@console_command("stagetune-plan")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from stagetune.runs.preview import preview

    print(preview(args.overrides, build_weights=args.model))
    return 0


if __name__ == "__main__":
    main()
