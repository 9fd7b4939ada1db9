"""``make docs``: rerun the README's runs and rewrite its numbers and pictures from what they produced.

The README's generated parts sit between ``<!-- make docs: NAME -->`` and ``<!-- /make docs: NAME -->``;
each NAME is a :class:`Section` here, which runs the commands the README shows (as a user would, in
fresh run directories under ``outputs/docs/<time>/``), reads their ``metrics.json`` and writes the
block: a table, the machine and the date. Pictures the runs draw are copied into ``docs/images/``;
TensorBoard screenshots go through ``scripts/screenshot_tensorboard.sh`` (headless Chromium), which
fails loudly when TensorBoard does not come up. Nothing here types a number.

    python scripts/make_docs.py                 # every section (tens of minutes on 2 CPU cores)
    python scripts/make_docs.py --only universal_approx --quick   # a check of the machinery
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "scripts" / "screenshot_tensorboard.sh"


class DocsError(RuntimeError):
    """A run or a screenshot that failed, or a README without the block to rewrite."""


def machine() -> str:
    """This machine in words: CPU model and cores, GPU if any, torch version."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    ) if Path("/proc/cpuinfo").exists() else platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU ({model}), {gpu}, torch {torch.__version__}"


def mean_std(values: list[float]) -> str:
    """``mean ± sample std``, or the single value."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def stagetune(*args: str) -> None:
    """``stagetune ARGS`` as a user runs it, from this source tree, one torch thread, no progress bar."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "stagetune", *args, "trainer.enable_progress_bar=false"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        shown = " ".join(a for a in args if not a.startswith("hydra."))
        raise DocsError(f"stagetune {shown} exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")


@dataclass
class Runner:
    """Runs the commands of the README into ``out`` and keeps what they wrote."""

    out: Path
    images: Path
    quick: bool

    def train(self, name: str, *overrides: str) -> dict:
        """``stagetune OVERRIDES`` into ``out/name``; its metrics.json, with ``wall_s`` (the whole command) added."""
        run_dir = self.out / name
        started = time.perf_counter()
        stagetune(*overrides, f"hydra.run.dir={run_dir}")
        wall = time.perf_counter() - started
        metrics = json.loads((run_dir / "metrics.json").read_text())
        print(f"  {name}: {wall:.0f} s", file=sys.stderr, flush=True)
        return {**metrics, "wall_s": wall, "run_dir": str(run_dir)}

    def sweep(self, name: str, *overrides: str) -> Path:
        """``stagetune -m OVERRIDES`` into ``out/name``; the sweep directory."""
        sweep_dir = self.out / name
        stagetune("-m", *overrides, f"hydra.sweep.dir={sweep_dir}")
        print(f"  {name}: sweep done", file=sys.stderr, flush=True)
        return sweep_dir

    def picture(self, source: Path, name: str) -> str:
        """Copy a picture a run drew into the docs' images; its README path."""
        if not source.exists():
            raise DocsError(f"the run drew no {source}")
        self.images.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.images / name)
        return f"docs/images/{name}"

    def screenshot(self, logdir: Path, view: str, name: str) -> str:
        """TensorBoard on ``logdir`` at ``#view``, through headless Chromium; its README path."""
        self.images.mkdir(parents=True, exist_ok=True)
        target = self.images / name
        env = {**os.environ, "TENSORBOARD": str(Path(sys.executable).parent / "tensorboard")}  # this environment's
        done = subprocess.run(["bash", str(SCREENSHOT), str(logdir), str(target), "6123", view], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise DocsError(f"screenshot of {logdir} #{view} failed: {done.stderr.strip()}")
        return f"docs/images/{name}"


@dataclass
class Section:
    """One generated block of the README: what it runs and the markdown it writes from the results."""

    name: str
    build: Callable[[Runner], str]


def universal_approx(runner: Runner) -> str:
    budget = ["plan.stages.all.epochs=2"] if runner.quick else []
    run = runner.train("universal_approx", "experiment=universal_approx", *budget)
    valid = run["valid"]  # the chosen checkpoint's
    widths = sorted(int(key.rsplit("w", 1)[1]) for key in valid if key.startswith("val/mse/w"))
    image = runner.picture(Path(run["run_dir"]) / "universal_approx.png", "universal_approx.png")
    rows = "\n".join(f"| {w} | {valid[f'val/mse/w{w}']:.1e} |" for w in widths)
    return (
        f"| hidden width | validation MSE |\n| --- | --- |\n{rows}\n\n"
        f"`experiment=universal_approx`: {run['time_s']:.0f} s of fitting, {run['wall_s']:.0f} s for the whole command.\n\n"
        f"![ReLU networks of growing width fitting sin]({image})"
    )


def digits_transfer(runner: Runner) -> str:
    """Frozen stage only, fine-tuned, and from scratch, each over seeds 0-4: valid and test accuracy."""
    seeds = [0] if runner.quick else [0, 1, 2, 3, 4]
    budget = ["data.train_per_class=2", "model.weights.train_per_class=4", "model.weights.epochs=1"] if runner.quick else []
    recipes = {
        "frozen stage only (`~plan.stages.unfrozen`)": ["experiment=digits_transfer", "~plan.stages.unfrozen"],
        "**fine-tuned** (`digits_transfer`, frozen then unfrozen)": ["experiment=digits_transfer"],
        "scratch (`digits_scratch`, same data, plan and budget)": ["experiment=digits_scratch"],
    }
    lines = ["| run | seeds | valid acc | test acc | wall time per run |", "| --- | --- | --- | --- | --- |"]
    for k, (label, overrides) in enumerate(recipes.items()):
        runs = [runner.train(f"digits_{k}_seed{seed}", *overrides, f"seed={seed}", *budget) for seed in seeds]
        valid = [r["valid"]["val/acc"] for r in runs]
        test = [r["test"]["test/acc"] for r in runs]
        wall = statistics.median(r["wall_s"] for r in runs)
        lines.append(f"| {label} | {','.join(map(str, seeds))} | {mean_std(valid)} | {mean_std(test)} | {wall:.0f} s |")
    seeds_text = ", ".join(map(str, seeds))
    return "\n".join(lines) + f"\n\nSeeds {seeds_text}; each run's checkpoint is chosen on valid, and test is read once, for that checkpoint."


def tensorboard(runner: Runner) -> str:
    """Screenshots: a run's Custom Scalars (every group's LR on one chart, the stage under it), a sweep's HParams."""
    budget = ["data.train_per_class=2", "model.weights.train_per_class=4", "model.weights.epochs=1"] if runner.quick else []
    run = runner.train("tensorboard_digits", "experiment=digits_transfer", *budget)
    layout = runner.screenshot(Path(run["run_dir"]) / "tensorboard", "custom_scalars&_smoothingWeight=0", "tensorboard_custom_scalars.png")
    grid = ["optim.wd=0,0.1", "plan.lr=1e-3,1e-2"] if runner.quick else ["optim.wd=0,0.01,0.1", "plan.lr=1e-3,5e-3"]
    sweep = runner.sweep("tensorboard_sweep", "experiment=ratings_synthetic", *grid, *(["data.n_ratings=2000"] if runner.quick else []))
    hparams = runner.screenshot(sweep, "hparams", "tensorboard_hparams.png")
    command = f"stagetune -m experiment=ratings_synthetic {' '.join(grid)}"
    return (
        f"![TensorBoard Custom Scalars of `experiment=digits_transfer`: each layer group's LR on one chart, the stage under it]({layout})\n\n"
        f"![TensorBoard HParams of `{command}`: the swept keys, hp/best, hp/test, hp/last]({hparams})"
    )


SECTIONS = {s.name: s for s in (Section("universal_approx", universal_approx), Section("digits_transfer", digits_transfer), Section("tensorboard", tensorboard))}


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- make docs: {re.escape(name)} -->\n)(.*?)(<!-- /make docs: {re.escape(name)} -->)", re.S)


def rewrite(text: str, name: str, body: str, stamp: str) -> str:
    """``text`` with block ``name`` replaced by ``body`` and the stamp (machine, date)."""
    pattern = block_pattern(name)
    if not pattern.search(text):
        raise DocsError(f"the README has no block <!-- make docs: {name} --> ... <!-- /make docs: {name} -->")
    return pattern.sub(lambda m: f"{m.group(1)}{body}\n\n_{stamp}_\n{m.group(3)}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make docs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="regenerate only these blocks")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the machinery; the numbers are not the README's")
    parser.add_argument("--readme", type=Path, help="the README to rewrite (default: the project's; with --quick, a copy in the output directory)")
    parser.add_argument("--images", type=Path, help="where pictures go (default: docs/images; with --quick, beside the copy)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "docs")
    args = parser.parse_args(argv)
    now = datetime.datetime.now()
    out = args.out / now.strftime("%Y-%m-%d_%H-%M-%S")
    if args.readme is None:  # a quick check never touches the project's README or pictures
        args.readme = out / "README.md" if args.quick else ROOT / "README.md"
        if args.quick:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / "README.md", args.readme)
    images = args.images or (out / "images" if args.quick else ROOT / "docs" / "images")
    runner = Runner(out, images, args.quick)
    text = args.readme.read_text()
    for name in args.only or list(SECTIONS):
        print(f"make docs: {name}", file=sys.stderr, flush=True)
        kind = "quick check (tiny budgets), not the README's numbers" if args.quick else "measured"
        stamp = f"Generated by `make docs` on {now:%Y-%m-%d}, {kind}, on a {machine()}."
        try:
            text = rewrite(text, name, SECTIONS[name].build(runner), stamp)
        except DocsError as err:
            print(f"make docs: error: {err}", file=sys.stderr)
            return 1
        args.readme.write_text(text)  # each block lands as soon as it is made
    print(f"make docs: wrote {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
