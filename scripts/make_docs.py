"""``make docs``: rerun the runs of the documentation's results pages and rewrite their numbers and pictures.

The pages' generated parts sit between ``<!-- make docs: NAME -->`` and ``<!-- /make docs: NAME -->``;
each NAME is a :class:`Section` here, naming its page under ``docs/``, which runs the commands the page
shows (as a user would, in fresh run directories under ``outputs/docs/<time>/``), reads their
``metrics.json`` and writes the block: a table, the machine and the date. Pictures the runs draw are
copied into ``docs/images/`` and linked from the page;
TensorBoard screenshots go through ``scripts/screenshot_tensorboard.sh`` (headless Chromium), which
fails loudly when TensorBoard does not come up. Nothing here types a number.

    python scripts/make_docs.py                 # every section (one to two hours on 2 busy CPU cores)
    python scripts/make_docs.py --only universal_approx --quick   # a check of the machinery
"""

from __future__ import annotations

import argparse
import csv
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "scripts" / "screenshot_tensorboard.sh"


class DocsError(RuntimeError):
    """A run or a screenshot that failed, or a page without the block to rewrite."""


def machine() -> str:
    """This machine in words: CPU model and cores, GPU if any, torch version."""
    model = (
        next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
            platform.processor() or platform.machine(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.machine()
    )
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
    """Runs the commands of the docs into ``out`` and keeps what they wrote; pictures are linked from ``page_dir``."""

    out: Path
    images: Path
    quick: bool
    page_dir: Path | None = None

    def link(self, target: Path) -> str:
        """The path of a picture as the page being written links it."""
        return os.path.relpath(target, self.page_dir or self.images.parent)

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
        """``stagetune -m OVERRIDES`` into ``out/name``; the sweep directory, its whole wall time in ``wall_s.txt``."""
        sweep_dir = self.out / name
        started = time.perf_counter()
        stagetune("-m", *overrides, f"hydra.sweep.dir={sweep_dir}")
        wall = time.perf_counter() - started
        (sweep_dir / "wall_s.txt").write_text(f"{wall:.1f}\n")
        print(f"  {name}: sweep done, {wall:.0f} s", file=sys.stderr, flush=True)
        return sweep_dir

    def benchmarks(self, *args: str) -> dict:
        """``python -m benchmarks ARGS`` into ``out/bench``; its ``results.json``."""
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
        done = subprocess.run([sys.executable, "-m", "benchmarks", *args, "--out", str(self.out / "bench")], cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise DocsError(f"python -m benchmarks {' '.join(args)} exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        (results,) = (self.out / "bench").glob("*/results.json")
        return json.loads(results.read_text())

    def picture(self, source: Path, name: str) -> str:
        """Copy a picture a run drew into the docs' images; its link from the page."""
        if not source.exists():
            raise DocsError(f"the run drew no {source}")
        self.images.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.images / name)
        return self.link(self.images / name)

    def screenshot(self, logdir: Path, view: str, name: str) -> str:
        """TensorBoard on ``logdir`` at ``#view``, through headless Chromium; its link from the page."""
        self.images.mkdir(parents=True, exist_ok=True)
        target = self.images / name
        env = {**os.environ, "TENSORBOARD": str(Path(sys.executable).parent / "tensorboard")}  # this environment's
        done = subprocess.run(["bash", str(SCREENSHOT), str(logdir), str(target), "6123", view], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise DocsError(f"screenshot of {logdir} #{view} failed: {done.stderr.strip()}")
        return self.link(target)


@dataclass
class Section:
    """One generated block of the docs: its page (under ``docs/``), what it runs and the markdown it writes from the results."""

    name: str
    build: Callable[[Runner], str]
    page: str


def universal_approx(runner: Runner) -> str:
    budget = ["plan.stages.all.epochs=2"] if runner.quick else []
    run = runner.train("universal_approx", "experiment=universal_approx", *budget)
    valid = run["valid"]  # the chosen checkpoint's
    widths = sorted(int(key.rsplit("w", 1)[1]) for key in valid if key.startswith("val/mse/w"))
    image = runner.picture(Path(run["run_dir"]) / "universal_approx.png", "universal_approx.png")
    test = run["test"]  # read once, for the checkpoint valid chose
    rows = "\n".join(f"| {w} | {valid[f'val/mse/w{w}']:.1e} | {test[f'test/mse/w{w}']:.1e} |" for w in widths)
    return (
        f"| hidden width | validation MSE | test MSE |\n| --- | --- | --- |\n{rows}\n\n"
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


def sweep_jobs(sweep_dir: Path) -> list[dict[str, str]]:
    """The completed jobs of a sweep as its report's ``summary.csv`` gives them; a failed job is an error."""
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    failed = [f"job {r['job']}: {r['status']} {r['error']}" for r in rows if r["status"] != "completed"]
    if failed or not rows:
        raise DocsError(f"the sweep {sweep_dir} did not complete: {'; '.join(failed) or 'no jobs'}")
    return rows


def job_values(sweep_dir: Path, job: dict[str, str]) -> dict[str, str]:
    """A job's row with every key its command line set (the report lists only keys whose value varies)."""
    items = yaml.safe_load((sweep_dir / job["job"] / "overrides.yaml").read_text()) or []
    return {**dict(item.split("=", 1) for item in items if "=" in item), **job}


def sweep_wall(sweep_dir: Path) -> float:
    return float((sweep_dir / "wall_s.txt").read_text())


def job_metrics(sweep_dir: Path, job: str) -> dict:
    return json.loads((sweep_dir / job / "metrics.json").read_text())


def short(value: float) -> str:
    """A swept value as the docs write it: ``1e-4``, ``5e-3``, ``0.1``, ``50``."""
    if value == 0 or abs(value) >= 0.1:
        return f"{value:g}"
    return f"{value:.0e}".replace("e-0", "e-")


def bold_if(text: str, chosen: bool) -> str:
    return f"**{text}**" if chosen else text


def sgd_line(runner: Runner) -> str:
    """The line fit's end, next to the least-squares and true lines; its two pictures."""
    run = runner.train("sgd_line", "experiment=sgd_line", *(["plan.stages.all.epochs=2"] if runner.quick else []))
    valid, data = run["valid"], run["data"]
    png = runner.picture(Path(run["run_dir"]) / "sgd_line.png", "sgd_line.png")
    gif = runner.picture(Path(run["run_dir"]) / "sgd_line.gif", "sgd_line.gif")
    return (
        "| line | a | b |\n| --- | --- | --- |\n"
        f"| SGD's (the checkpoint valid chose) | {valid['fit/a']:.2f} | {valid['fit/b']:.2f} |\n"
        f"| least squares on the 100 points | {data['least_squares_a']:.2f} | {data['least_squares_b']:.2f} |\n"
        f"| true | {data['true_a']:g} | {data['true_b']:g} |\n\n"
        f"MSE to the true line: valid {valid['val/loss']:.5f}, test {run['test']['test/loss']:.5f}. "
        f"`experiment=sgd_line`: {run['time_s']:.0f} s of fitting and drawing, {run['wall_s']:.0f} s for the whole command.\n\n"
        f"![ScratchSGD fitting a line]({png})\n\n![the line moving toward the points]({gif})"
    )


def wd_lr_sweep(runner: Runner) -> str:
    """The sweep report's heatmap of ``sweep=wd_lr`` and its grid of best valid RMSEs, with the data's noise floor."""
    budget = ["optim.wd=0,0.1", "plan.lr=5e-3,2e-2", "data.n_ratings=4000", "plan.stages.all.epochs=1"] if runner.quick else []
    sweep = runner.sweep("wd_lr", "experiment=ratings_synthetic", "sweep=wd_lr", *budget)
    jobs = sweep_jobs(sweep)
    image = runner.picture(sweep / "summary.png", "sweep_heatmap.png")
    wds = sorted({j["optim.wd"] for j in jobs}, key=float)
    lrs = sorted({j["plan.lr"] for j in jobs}, key=float)
    cell = {(j["optim.wd"], j["plan.lr"]): float(j["val/rmse best"]) for j in jobs}
    best = min(cell, key=cell.get)
    rows = "\n".join(f"| {wd} | " + " | ".join(bold_if(f"{cell[wd, lr]:.4f}", (wd, lr) == best) for lr in lrs) + " |" for wd in wds)
    floor = job_metrics(sweep, jobs[0]["job"])["data"]["noise_floor"]
    by_wd = max(max(cell[wd, lr] for wd in wds) - min(cell[wd, lr] for wd in wds) for lr in lrs)
    by_lr = max(max(cell[wd, lr] for lr in lrs) - min(cell[wd, lr] for lr in lrs) for wd in wds)
    return (
        f"![stagetune -m experiment=ratings_synthetic sweep=wd_lr: best val/rmse over wd x lr]({image})\n\n"
        f"| best val/rmse: `optim.wd` \\ `plan.lr` | {' | '.join(lrs)} |\n| --- |{' --- |' * len(lrs)}\n{rows}\n\n"
        f"At a fixed LR, weight decay moves the best val/rmse by at most {by_wd:.4f}; at a fixed wd, the LR by up to {by_lr:.4f}. "
        f"The noise floor of these ratings (the true model's RMSE on valid) is {floor:.3f}; "
        f"{len(jobs)} jobs, {sweep_wall(sweep):.0f} s for the whole sweep."
    )


def wd_l2_sweep(runner: Runner) -> str:
    """``make sweep``: train, valid and test RMSE against L2 weight decay, the report's plot, the sweep's time."""
    budget = ["optim.wd=1e-6,1e-2", "plan.stages.all.epochs=1", "checkpoint.every_n_epochs=1", "trainer.limit_train_batches=4"] if runner.quick else []
    sweep = runner.sweep("wd_l2", "experiment=movielens", "sweep=wd_l2", *budget)
    jobs = sorted(sweep_jobs(sweep), key=lambda j: float(j["optim.wd"]))
    image = runner.picture(sweep / "summary.png", "wd_l2_sweep.png")
    best = min(jobs, key=lambda j: float(j["val/rmse best"]))
    wds = [short(float(j["optim.wd"])) for j in jobs]

    def row(label: str, key: str, mark: bool = False) -> str:
        return f"| {label} | " + " | ".join(bold_if(f"{float(j[key]):.3f}", mark and j is best) for j in jobs) + " |"

    train = [float(j["train_eval/rmse"]) for j in jobs]
    valid = [float(j["val/rmse best"]) for j in jobs]
    return (
        f"![make sweep: train and valid RMSE against L2 weight decay on ML-100k]({image})\n\n"
        f"| `optim.wd` (L2) | {' | '.join(wds)} |\n| --- |{' --- |' * len(jobs)}\n"
        + "\n".join(
            [row("train RMSE (eval mode)", "train_eval/rmse"), row("valid RMSE (chooses)", "val/rmse best", True), row("test RMSE (u1.test)", "test/rmse")]
        )
        + f"\n\nFrom the smallest to the largest wd, train RMSE goes {train[0]:.3f} -> {train[-1]:.3f} and valid {valid[0]:.3f} -> {valid[-1]:.3f}; "
        f"valid is lowest at wd {wds[jobs.index(best)]} ({valid[jobs.index(best)]:.3f}). "
        f"`make sweep`: {len(jobs)} jobs, {sweep_wall(sweep):.0f} s for the whole sweep, "
        f"{min(float(j['time_s']) for j in jobs):.0f}-{max(float(j['time_s']) for j in jobs):.0f} s of fitting per job."
    )


# The SVD++ rows of the MovieLens results: the reference and the variants tried, all on experiment=movielens's recipe.
SVDPP_RECIPES = {
    "`dot_bias` (`experiment=movielens`), reference": ["experiment=movielens"],
    "`svdpp`, wd 1e-4 on `y` too": ["experiment=movielens_svdpp", "plan.stages.all.wd.implicit=1e-4"],
    "`svdpp`, L2 wd 1e-3 on `y` (`experiment=movielens_svdpp`)": ["experiment=movielens_svdpp"],
    "`svdpp`, L2 wd 1e-2 on `y`": ["experiment=movielens_svdpp", "plan.stages.all.wd.implicit=1e-2"],
    "`svdpp`, `optim.wd=0 model.freq_wd=0.02`": ["experiment=movielens_svdpp", "optim.wd=0", "plan.stages.all.wd=null", "model.freq_wd=0.02"],
    "`svdpp`, `optim.wd=0 model.freq_wd=0.05`": ["experiment=movielens_svdpp", "optim.wd=0", "plan.stages.all.wd=null", "model.freq_wd=0.05"],
}
QUICK_MOVIELENS = ["plan.stages.all.epochs=1", "trainer.limit_train_batches=4"]


def movielens_svdpp(runner: Runner) -> str:
    """SVD++ variants against the dot product on ML-100k u1; test shown for the reference and the row valid chose."""
    budget = QUICK_MOVIELENS if runner.quick else []
    runs = {label: runner.train(f"svdpp_{k}", *overrides, *budget) for k, (label, overrides) in enumerate(SVDPP_RECIPES.items())}
    chosen = min(list(runs)[1:], key=lambda label: runs[label]["valid"]["val/rmse"])
    reference = next(iter(runs))
    lines = ["| model, change to the recipe | val RMSE | test RMSE | fit |", "| --- | --- | --- | --- |"]
    for label, run in runs.items():
        test = f"{run['test']['test/rmse']:.4f}" if label in (reference, chosen) else ""
        valid = bold_if(f"{run['valid']['val/rmse']:.4f}", label == chosen)
        lines.append(f"| {label} | {valid} | {test} | {run['time_s']:.0f} s |")
    return "\n".join(lines) + "\n\nOne seed; test is read for the reference and for the SVD++ row valid chose only."


def recipe_table(sweep: Path, keys: dict[str, str]) -> str:
    """A recipe sweep's jobs: the swept values, valid (the chosen in bold), train in eval mode, test."""
    jobs = [job_values(sweep, j) for j in sweep_jobs(sweep)]
    best = min(jobs, key=lambda j: float(j["val/rmse best"]))
    head = " | ".join(f"`{k}`" if k == label else label for k, label in keys.items())
    lines = [f"| {head} | valid RMSE (chooses) | train RMSE (eval) | test RMSE |", "| --- " * (len(keys) + 3) + "|"]
    for job in sorted(jobs, key=lambda j: tuple(float(j[k]) for k in keys)):
        valid = f"{float(job['val/rmse best']):.4f}"
        valid = f"**{valid}** (chosen)" if job is best else valid
        values = " | ".join(short(float(job[k])) for k in keys)
        lines.append(f"| {values} | {valid} | {float(job['train_eval/rmse']):.3f} | {float(job['test/rmse']):.4f} |")
    return "\n".join(lines) + f"\n\n{len(jobs)} jobs, {sweep_wall(sweep):.0f} s for the whole sweep."


def recipe_movielens(runner: Runner) -> str:
    """``sweep=recipe_movielens``: how experiment=movielens's recipe was chosen."""
    budget = ["optim.wd=1e-4", "plan.lr=5e-3,1e-2", "model.n_factors=50", *QUICK_MOVIELENS] if runner.quick else []
    sweep = runner.sweep("recipe_movielens", "experiment=movielens", "sweep=recipe_movielens", *budget)
    return recipe_table(sweep, {"optim.wd": "`optim.wd` (L2)", "plan.lr": "plan.lr", "model.n_factors": "factors"})


def recipe_movielens_nn(runner: Runner) -> str:
    """``sweep=recipe_movielens_nn``: how experiment=movielens_nn's recipe was chosen."""
    budget = ["optim.wd=1.0", "plan.lr=1e-2,3e-2", *QUICK_MOVIELENS] if runner.quick else []
    sweep = runner.sweep("recipe_movielens_nn", "experiment=movielens_nn", "sweep=recipe_movielens_nn", *budget)
    return recipe_table(sweep, {"optim.wd": "optim.wd", "plan.lr": "plan.lr"})


def movielens_folds(runner: Runner) -> str:
    """``experiment=movielens`` on ML-100k's five folds: test RMSE per fold, mean and spread."""
    folds = ["u1", "u2"] if runner.quick else ["u1", "u2", "u3", "u4", "u5"]
    sweep = runner.sweep("movielens_folds", "experiment=movielens", f"data.split={','.join(folds)}", *(QUICK_MOVIELENS if runner.quick else []))
    jobs = sorted(sweep_jobs(sweep), key=lambda j: j["data.split"])
    test = [float(j["test/rmse"]) for j in jobs]
    valid = [float(j["val/rmse best"]) for j in jobs]
    return (
        f"`experiment=movielens` on ML-100k's folds (`-m data.split={','.join(folds)}`): test RMSE "
        + ", ".join(f"{t:.4f}" for t in test)
        + f", **mean {statistics.mean(test):.4f}, sample std {statistics.stdev(test):.4f}** (valid {mean_std(valid)}); "
        f"{sweep_wall(sweep):.0f} s for the {len(folds)} runs."
    )


# The synthetic-ratings rows of the MovieLens results: fastai's recipe, the experiment's default and the L2 variants.
SYNTHETIC_RECIPES = {
    "fastai's (batch 64, `fit_one_cycle(5, 5e-3)`, decoupled wd 0.1: `data.batch_size=64 plan.lr=5e-3 optim.wd=0.1`)": [
        "data.batch_size=64",
        "plan.lr=5e-3",
        "optim.wd=0.1",
    ],
    "batch 1024, lr 1e-2, decoupled wd 1.0 (the experiment's default)": [],
    "batch 1024, lr 3e-2, L2 wd 3e-4 (`optim.wd_kind=l2 optim.wd=3e-4 plan.lr=3e-2`)": ["optim.wd_kind=l2", "optim.wd=3e-4", "plan.lr=3e-2"],
    "batch 1024, lr 3e-2, L2 wd 3e-4 on the embeddings, none on the biases (`plan.stages.all.wd={biases: 0.0}`)": [
        "optim.wd_kind=l2",
        "optim.wd=3e-4",
        "plan.lr=3e-2",
        "plan.stages.all.wd={biases:0.0}",
    ],
    "batch 1024, lr 3e-2, L2 wd 1e-3": ["optim.wd_kind=l2", "optim.wd=1e-3", "plan.lr=3e-2"],
    "batch 1024, lr 3e-2, decoupled wd 3.0": ["optim.wd=3.0", "plan.lr=3e-2"],
}


def ratings_synthetic(runner: Runner) -> str:
    """Recipes on the synthetic ratings against their noise floor (validation RMSE, 5 epochs)."""
    budget = ["data.n_ratings=4000", "plan.stages.all.epochs=1"] if runner.quick else []
    runs = {
        label: runner.train(f"synthetic_{k}", "experiment=ratings_synthetic", *overrides, *budget)
        for k, (label, overrides) in enumerate(SYNTHETIC_RECIPES.items())
    }
    floor = next(iter(runs.values()))["data"]["noise_floor"]
    lines = [f"| recipe | val RMSE | / noise floor {floor:.3f} | fit |", "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {run['valid']['val/rmse']:.4f} | {run['valid']['val/rmse'] / floor:.3f} | {run['time_s']:.0f} s |" for label, run in runs.items()]
    default = runs[list(SYNTHETIC_RECIPES)[1]]
    return "\n".join(lines) + f"\n\nOne seed each; `experiment=ratings_synthetic` (the default row) took {default['wall_s']:.0f} s with start-up."


def bench(runner: Runner) -> str:
    """``make bench``: every figure's median ratio over the repeats, its spread and whether the target is met."""
    results = runner.benchmarks(*(["--quick", "--repeats", "1", "--only", "frozen"] if runner.quick else []))
    met = {True: "yes", False: "**no**", None: "-"}
    lines = ["| figure | median | spread | target | met |", "| --- | --- | --- | --- | --- |"]
    for f in results["figures"]:
        target = "-" if f["target"] is None else f["target_text"]
        lines.append(f"| {f['name']} | {f['median']:.3g} | {f['min']:.3g}-{f['max']:.3g} | {target} | {met[f['met']]} |")
    context = results["context"]
    text = "\n".join(lines) + (
        f"\n\n`make bench`: {context['repeats']} repeat{'s' if context['repeats'] != 1 else ''}, {context['timed steps (after warm-up)']} timed steps, "
        f"{context['wall time s'] / 60:.0f} min in all; load average at the end {context['load average at end']}."
    )
    if max(float(v) for v in context["load average at end"].split()) > context["cpu cores"]:
        text += (
            f" **The machine was shared**: more runnable jobs than its {context['cpu cores']} cores, so other work is inside"
            " these timings (hence the wide spreads); rerun on an idle machine for the pipeline's own figures."
        )
    return text


SECTIONS = {
    s.name: s
    for s in (
        Section("digits_transfer", digits_transfer, "results/digits.md"),
        Section("movielens_svdpp", movielens_svdpp, "results/movielens.md"),
        Section("recipe_movielens", recipe_movielens, "results/movielens.md"),
        Section("recipe_movielens_nn", recipe_movielens_nn, "results/movielens.md"),
        Section("movielens_folds", movielens_folds, "results/movielens.md"),
        Section("ratings_synthetic", ratings_synthetic, "results/movielens.md"),
        Section("sgd_line", sgd_line, "results/optimizer.md"),
        Section("universal_approx", universal_approx, "results/optimizer.md"),
        Section("wd_lr_sweep", wd_lr_sweep, "results/sweeps.md"),
        Section("wd_l2_sweep", wd_l2_sweep, "results/sweeps.md"),
        Section("tensorboard", tensorboard, "results/sweeps.md"),
        Section("bench", bench, "results/performance.md"),
    )
}


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- make docs: {re.escape(name)} -->\n)(.*?)(<!-- /make docs: {re.escape(name)} -->)", re.S)


def rewrite(text: str, name: str, body: str, stamp: str) -> str:
    """``text`` with block ``name`` replaced by ``body`` and the stamp (machine, date)."""
    pattern = block_pattern(name)
    if not pattern.search(text):
        raise DocsError(f"the page has no block <!-- make docs: {name} --> ... <!-- /make docs: {name} -->")
    return pattern.sub(lambda m: f"{m.group(1)}{body}\n\n_{stamp}_\n{m.group(3)}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make docs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="regenerate only these blocks")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the machinery; the numbers are not the docs'")
    parser.add_argument(
        "--docs", type=Path, help="the docs folder whose pages to rewrite (default: the project's; with --quick, copies in the output directory)"
    )
    parser.add_argument("--images", type=Path, help="where pictures go (default: the docs folder's images/)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "docs")
    args = parser.parse_args(argv)
    now = datetime.datetime.now()
    out = args.out / now.strftime("%Y-%m-%d_%H-%M-%S")
    names = args.only or list(SECTIONS)
    if args.docs is None:  # a quick check never touches the project's pages or pictures
        args.docs = out / "docs" if args.quick else ROOT / "docs"
        if args.quick:
            for page in {SECTIONS[name].page for name in names}:
                (args.docs / page).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / "docs" / page, args.docs / page)
    runner = Runner(out, args.images or args.docs / "images", args.quick)
    for name in names:
        print(f"make docs: {name}", file=sys.stderr, flush=True)
        page = args.docs / SECTIONS[name].page
        runner.page_dir = page.parent
        kind = "quick check (tiny budgets), not the docs' numbers" if args.quick else "measured"
        stamp = f"Generated by `make docs` on {now:%Y-%m-%d}, {kind}, on a {machine()}."
        try:
            text = rewrite(page.read_text(), name, SECTIONS[name].build(runner), stamp)
        except DocsError as err:
            print(f"make docs: error: {err}", file=sys.stderr)
            return 1
        page.write_text(text)  # each block lands as soon as it is made
        print(f"make docs: wrote {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
