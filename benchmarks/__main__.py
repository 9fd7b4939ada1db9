"""``python -m benchmarks [--repeats N] [--quick]``: run every figure, print the table, write it out."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

import torch

from benchmarks import cases, study
from benchmarks.harness import Figure, against, per_step, side_by_side, table, write
from stagetune.engine.loaders import default_workers
from stagetune.vision.data import ImageFolderData

RATING_SIZES = (100_000, 1_000_000, 10_000_000)
MOVIELENS_SHAPES = {100_000: (943, 1_682), 1_000_000: (6_040, 3_706), 10_000_000: (69_878, 10_677)}  # users, items
SCALE_BATCHES = 150  # batches timed per size; an epoch of 10M ratings is ~7,800 batches
GROUPS = ("overhead", "frozen", "feature_cache", "loader", "ratings_scale", "study_workers")
CACHE_SIZES = (32, 64)  # px: ResNet34's frozen body costs ~4x more per image at 64


def overhead(repeats: int, warmup: int, steps: int) -> list[Figure]:
    figures = []
    for name, overrides, loss, target, bare_target, timed in (
        ("ResNet34 32 px", cases.IMAGES, cases.image_loss, 0.97, None, steps),
        # a ratings step is ~3 ms: time most of an epoch so that the ratio is not noise
        ("dot_bias batch 1024", cases.RATINGS, cases.rating_loss, 0.85, 0.95, 10 * steps),
    ):
        cfg = cases.config(overrides + [f"trainer.limit_train_batches={warmup + timed}"])
        unlogged = cases.config(overrides + [f"trainer.limit_train_batches={warmup + timed}", "logger=none"])
        stagetune, bare, quiet = against(
            lambda: cases.plain_steps(cfg, loss, warmup, timed),
            [
                lambda: per_step(cases.stagetune_fit(cfg)[0].stamps, warmup),
                lambda: cases.bare_lightning_steps(cfg, loss, warmup, timed),
                lambda: per_step(cases.stagetune_fit(unlogged)[0].stamps, warmup),
            ],
            repeats,
        )
        note = (
            "throughput of the stagetune Trainer (StagePlan, default callbacks, TensorBoard logging as the experiment configures it) relative to a plain loop"
        )
        figures.append(Figure(f"pipeline overhead, {name}", "plain s/step", "stagetune s/step", stagetune, target, True, note))
        note = (
            "reference: a bare Lightning Trainer (no callbacks, logger or checkpoints) relative to the same plain loop, the floor under any Lightning pipeline"
        )
        figures.append(Figure(f"bare Lightning, {name}", "plain s/step", "bare Lightning s/step", bare, None, True, note))
        every = cfg.trainer.log_every_n_steps
        note = (
            "what stagetune costs over a bare Lightning Trainer, from the same repeats: its callbacks, checkpointing and the TensorBoard "
            f"writes the bare Trainer does not make (training loss and per-group LRs {f'every {every} steps' if every > 1 else 'every step'})"
        )
        own = [s / b for s, b in zip(stagetune, bare)]
        figures.append(Figure(f"stagetune / bare Lightning, {name}", "bare Lightning s/step", "stagetune s/step", own, bare_target, True, note))
        note = "reference: the same with logger=none, so the callbacks alone: the difference from the row above is TensorBoard's writer (one event a scalar, written by a thread that contends for the GIL)"
        alone = [q / b for q, b in zip(quiet, bare)]
        figures.append(
            Figure(f"stagetune without TensorBoard / bare Lightning, {name}", "bare Lightning s/step", "stagetune logger=none s/step", alone, None, True, note)
        )
    return figures


def frozen(repeats: int, warmup: int, steps: int) -> list[Figure]:
    cfg = cases.config(cases.IMAGES + [f"trainer.limit_train_batches={warmup + steps}"])
    no_bn, bn = against(
        lambda: cases.plain_steps(cfg, cases.image_loss, warmup, steps),
        [lambda bn=bn: cases.plain_steps(cfg, cases.image_loss, warmup, steps, freeze_to=-1, train_bn=bn) for bn in (False, True)],
        repeats,
    )
    notes = (
        "body frozen with its BatchNorm: autograd records nothing in the body, backward runs through the head only",
        "train_bn=true (fastai's default): BatchNorm weights in the body train, so backward still flows through the whole body (only conv weight gradients are skipped)",
    )
    # against() gives unfrozen / frozen; the figure is frozen / unfrozen
    return [
        Figure(f"frozen body step, train_bn={flag}", "frozen s/step", "unfrozen s/step", [1 / r for r in ratios], 0.5, False, note)
        for flag, ratios, note in (("false", no_bn, notes[0]), ("true", bn, notes[1]))
    ]


def feature_cache(repeats: int) -> list[Figure]:
    stage = ["plan.stages.all.epochs=2", "plan.stages.all.freeze_to=-1", "plan.stages.all.train_bn=false", "data.train_per_class=40"]
    figures = []
    for size in CACHE_SIZES:
        off, auto = (cases.config(cases.IMAGES + stage + [f"data.size={size}", f"plan.cache={mode}"]) for mode in ("off", "auto"))
        ratios = side_by_side(
            lambda: cases.stagetune_fit(off)[1].seconds[-1],
            lambda: cases.stagetune_fit(auto)[1].seconds[-1],
            repeats,
        )
        note = (
            f"second epoch of a frozen-body stage (train_bn=false, no augmentation), 400 digits at {size} px; validation excluded; "
            "the first epoch pays for computing the cache; the body's share of an uncached step grows with the image size"
        )
        figures.append(Figure(f"feature cache, later epoch, {size} px", "uncached epoch s", "cached epoch s", ratios, 10, True, note))
    return figures


def loader(repeats: int, warmup: int, steps: int) -> list[Figure]:
    cfg = cases.config(cases.IMAGES + [f"trainer.limit_train_batches={warmup + steps}"])
    with tempfile.TemporaryDirectory() as tmp:
        root = cases.write_image_folder(Path(tmp), per_class=(warmup + steps) * cfg.data.batch_size // 4 + 1)

        def files() -> ImageFolderData:
            return ImageFolderData(root=str(root), size=cfg.data.size, batch_size=cfg.data.batch_size, augment=True)

        digits, jpegs = against(
            lambda: per_step(cases.stagetune_fit(cfg)[0].stamps, warmup),
            [lambda: cases.loader_batches(cfg, warmup, steps), lambda: cases.datamodule_batches(files(), warmup, steps)],
            repeats,
        )
    return [
        Figure(
            "data loader vs step, digits",
            "step s/batch",
            "loader s/batch",
            digits,
            2,
            True,
            "images/s of the digits training loader alone (in memory: no workers by default) relative to the ResNet34 training step's, 32 px, batch 32",
        ),
        Figure(
            "data loader vs step, JPEG files",
            "step s/batch",
            "loader s/batch",
            jpegs,
            2,
            True,
            "the same step against an image-folder loader decoding 320x240 JPEGs with random crops and flips, "
            f"with its default workers ({default_workers(decodes=True)} on this machine)",
        ),
    ]


def ratings_scale(repeats: int, sizes: tuple[int, ...]) -> list[Figure]:
    """Time per rating at MovieLens-shaped sizes, with dense embeddings (the default) and sparse ones."""
    base = sizes[0]
    datasets, configs = {}, {}
    for n in sizes:
        users, items = MOVIELENS_SHAPES[n]
        shape = [f"data.n_ratings={n}", f"data.n_users={users}", f"data.n_items={items}", f"trainer.limit_train_batches={SCALE_BATCHES}"]
        for sparse in (False, True):
            configs[n, sparse] = cases.config(cases.RATINGS + shape + [f"model.sparse={str(sparse).lower()}"])
        datasets[n], *_ = cases.build_run(configs[n, False])
        datasets[n].setup("fit")

    def seconds_per_rating(n: int, sparse: bool) -> float:
        cfg = configs[n, sparse]
        return per_step(cases.stagetune_fit(cfg, datasets[n])[0].stamps, 5) / cfg.data.batch_size

    figures = []
    for sparse in (False, True):
        kind = "sparse" if sparse else "dense"
        larger = sizes[1:]
        per_size = against(lambda: seconds_per_rating(base, sparse), [lambda n=n: seconds_per_rating(n, sparse) for n in larger], repeats)
        for n, ratios in zip(larger, per_size):
            users, items = MOVIELENS_SHAPES[n]
            note = (
                f"s/rating of training steps ({SCALE_BATCHES} batches of 1024, first 5 not timed) with {users:,} users and {items:,} items "
                f"against {base:,} ratings with {MOVIELENS_SHAPES[base][0]:,} and {MOVIELENS_SHAPES[base][1]:,}; "
                + ("model.sparse=true: lazy Adam updates the rows a batch used" if sparse else "dense Adam updates every row of both tables each step")
            )
            # against() gives base / n; the figure is n / base
            figures.append(
                Figure(
                    f"ratings time per rating, {n:,} vs {base:,}, {kind}", f"{n:,} s/rating", f"{base:,} s/rating", [1 / r for r in ratios], 1.25, False, note
                )
            )
    full = cases.config(cases.RATINGS + [f"data.n_ratings={base}"])
    epochs = [cases.stagetune_fit(full, datasets[base])[1].seconds[-1] for _ in range(repeats)]
    batches = len(datasets[base].train_dataloader())
    figures.append(
        Figure(
            f"ratings epoch at {base:,}",
            "epoch s",
            "1 s",
            epochs,
            1.0,
            False,
            f"absolute: one whole training epoch of {base:,} ratings ({batches} batches of 1024), validation excluded",
        )
    )
    return figures


def study_workers(repeats: int) -> list[Figure]:
    ratios = side_by_side(lambda: study.study_seconds(1), lambda: study.study_seconds(2), repeats)
    note = (
        f"one Optuna study of {study.N_TRIALS} ratings trials (~8 s each) on a journal file: wall time of one worker "
        "process over two (one torch thread each), worker start-up included"
    )
    return [Figure(f"study workers, {study.N_TRIALS} trials", "1 worker s", "2 workers s", ratios, 1.6, True, note)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs per figure")
    parser.add_argument("--quick", action="store_true", help="fewer steps and ratings sizes up to 1M")
    parser.add_argument("--out", default="outputs/bench", help="results go to OUT/<time>/")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="run only these groups of figures")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    warmup, steps = (2, 4) if args.quick else (3, 8)
    sizes = RATING_SIZES[:2] if args.quick else RATING_SIZES
    started = time.time()
    figures: list[Figure] = []
    groups = {
        "overhead": lambda: overhead(args.repeats, warmup, steps),
        "frozen": lambda: frozen(args.repeats, warmup, steps),
        "feature_cache": lambda: feature_cache(args.repeats),
        "loader": lambda: loader(args.repeats, warmup, steps),
        "ratings_scale": lambda: ratings_scale(args.repeats, sizes),
        "study_workers": lambda: study_workers(args.repeats),
    }
    for name, run in groups.items():
        if args.only and name not in args.only:
            continue
        for figure in run():
            figure.indicative = args.quick
            figures.append(figure)
            print(f"[{time.time() - started:5.0f} s] {figure.name}: {figure.median:.3f}", file=sys.stderr, flush=True)
    context = {
        "cpu cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "load average at end": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "repeats": args.repeats,
        "timed steps (after warm-up)": f"{steps} (after {warmup})",
        "wall time s": round(time.time() - started, 1),
    }
    out = Path(args.out) / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    write(figures, out, context)
    print(table(figures))
    print(f"\nresults: {out}/results.md, {out}/results.json")


if __name__ == "__main__":
    main()
