"""The LR range test (``stagetune-lr-find``): where to set a stage's learning rate.

For one stage of the plan, the model is frozen as that stage says and trained for ``steps`` batches
while the learning rate grows exponentially from ``start_lr`` to ``end_lr``; the test stops early
once the smoothed loss diverges. The stage's LR shape is kept: with a slice ``[lo, hi]`` the swept
rate is the highest group's and every other group keeps its ratio to it, so the suggestion can be
pasted back as the same slice. The suggested rate is the smaller of two of fastai's rules of thumb:
a tenth of the rate at the lowest smoothed loss, and the rate where the loss falls fastest.
The run directory receives ``lr_find.png``, ``lr_find.json`` and TensorBoard events.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytorch_lightning as pl  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from stagetune.build import build  # noqa: E402
from stagetune.commands.cli import hydra_command, hydra_task  # noqa: E402
from stagetune.config import optim_of, plan_of, validate  # noqa: E402
from stagetune.figures import new_figure  # noqa: E402
from stagetune.engine.faults import Diverged, check_checkpoint  # noqa: E402
from stagetune.engine.optim import Schedule  # noqa: E402
from stagetune.engine.plan import Plan  # noqa: E402
from stagetune.engine.trainer import build_trainer, trainer_kwargs  # noqa: E402
from stagetune.errors import ConfigError, StagetuneError  # noqa: E402
from stagetune.runs.rundir import RunDir, write_json  # noqa: E402
from stagetune.app import conf_dir, register_resolvers  # noqa: E402

log = logging.getLogger("stagetune")


@dataclass(frozen=True)
class RangeTestSettings:
    stage: str | None = None
    start_lr: float = 1e-7
    end_lr: float = 10.0
    steps: int = 100
    beta: float = 0.98
    diverge: float = 4.0

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "RangeTestSettings":
        s = cls(**OmegaConf.to_container(cfg, resolve=True))
        if not (math.isfinite(s.start_lr) and s.start_lr > 0):
            raise ConfigError("lr_find.start_lr", s.start_lr, "must be > 0")
        if not (math.isfinite(s.end_lr) and s.end_lr > s.start_lr):
            raise ConfigError("lr_find.end_lr", s.end_lr, f"must be above lr_find.start_lr={s.start_lr}")
        if s.steps < 5:
            raise ConfigError("lr_find.steps", s.steps, "must be >= 5")
        if not 0 <= s.beta < 1:
            raise ConfigError("lr_find.beta", s.beta, "must be in [0, 1)")
        if not s.diverge > 1:
            raise ConfigError("lr_find.diverge", s.diverge, "must be > 1")
        return s

    def lr_at(self, step: int) -> float:
        return self.start_lr * (self.end_lr / self.start_lr) ** (step / (self.steps - 1))


@dataclass
class RangeTest:
    """The curve of one test and the rates it suggests."""

    stage: str
    groups: dict[str, float]  # trainable layer group -> its share of the swept rate
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    diverged: bool

    def _usable(self) -> int:
        """Number of points before the loss left finite values."""
        n = 0
        while n < len(self.smoothed) and math.isfinite(self.smoothed[n]):
            n += 1
        return n

    def _window(self) -> tuple[int, int]:
        """Points the suggestions read: the first tenth (the average still settling) is skipped."""
        n = self._usable()
        return min(n - 1, len(self.lrs) // 10), n

    def minimum_lr(self) -> float:
        """The rate at the lowest smoothed loss."""
        start, end = self._window()
        return self.lrs[min(range(start, end), key=lambda k: self.smoothed[k])]

    def steepest_lr(self) -> float:
        """The rate where the smoothed loss falls fastest per unit of log LR, before its minimum.

        Slopes are taken over a tenth of the steps, so that one noisy step cannot win.
        """
        start, end = self._window()
        lowest = min(range(start, end), key=lambda k: self.smoothed[k])
        width = max(1, len(self.lrs) // 10)
        if lowest - width < start:
            return self.lrs[lowest] / 10
        slopes = {
            k + width // 2: (self.smoothed[k + width] - self.smoothed[k])
            / (math.log(self.lrs[k + width]) - math.log(self.lrs[k]))
            for k in range(start, lowest - width + 1)
        }
        return self.lrs[min(slopes, key=slopes.get)]

    def suggested_lr(self) -> float:
        return min(self.minimum_lr() / 10, self.steepest_lr())

    def suggested_stage_lr(self) -> float | list[float]:
        """The value to give the stage's ``lr``: a number, or ``[lo, hi]`` with the plan's ratio."""
        hi = self.suggested_lr()
        lo = hi * min(self.groups.values())
        return hi if math.isclose(lo, hi) else [lo, hi]

    def as_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "minimum_lr": self.minimum_lr(),
            "steepest_lr": self.steepest_lr(),
            "suggested_lr": self.suggested_lr(),
            "suggested_stage_lr": self.suggested_stage_lr(),
        }


class LRSweep(Callback):
    """Sets every param group's LR each step and records the loss; stops once it diverges."""

    def __init__(self, settings: RangeTestSettings) -> None:
        self.settings = settings
        self.shares: list[float] = []
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.diverged = False
        self._average = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = trainer.optimizers[0].param_groups
        top = max(g["lr"] for g in groups)
        self.shares = [g["lr"] / top for g in groups]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        lr = self.settings.lr_at(len(self.lrs))
        for group, share in zip(trainer.optimizers[0].param_groups, self.shares):
            group["lr"] = lr * share
        self.lrs.append(lr)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        beta = self.settings.beta
        self._average = beta * self._average + (1 - beta) * loss
        smooth = self._average / (1 - beta ** len(self.lrs))
        self.losses.append(loss)
        self.smoothed.append(smooth)
        lowest = min(self.smoothed)
        if not math.isfinite(smooth) or smooth > self.settings.diverge * lowest:
            self.diverged = True
            trainer.should_stop = True


def pick_stage(plan: Plan, name: str | None) -> int:
    names = list(plan.stages)
    if name is None:
        return 0
    if name not in names:
        raise ConfigError("lr_find.stage", name, "a stage of the plan: " + ", ".join(names))
    return names.index(name)


def run_range_test(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None) -> RangeTest:
    """Run the test for the stage ``cfg.lr_find.stage`` and write its plot and record into ``run_dir``."""
    with open_dict(cfg):
        settings = RangeTestSettings.from_config(cfg.pop("lr_find"))
    cfg = validate(cfg)
    run = RunDir(run_dir)
    run.save_config(cfg, overrides or [])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg.data)
    model = build(cfg.model, **datamodule.model_kwargs())
    if cfg.ckpt_path:
        state = check_checkpoint(cfg.ckpt_path, "ckpt_path")
        if not isinstance(state.get("state_dict"), dict):
            raise StagetuneError(f"ckpt_path: {cfg.ckpt_path} holds no model state_dict")
        model.load_state_dict(state["state_dict"])
    groups = model.layer_groups()
    plan = plan_of(cfg)
    plan.check_groups(len(groups))
    index = pick_stage(plan, settings.stage)
    stage = dataclasses.replace(plan.ordered[index], epochs=1, schedule=Schedule.constant)
    sweep = LRSweep(settings)
    one_process = {"devices": 1, "num_nodes": 1, "strategy": "auto", "limit_val_batches": 0, "num_sanity_val_steps": 0}
    trainer = build_trainer(
        Plan(lr=plan.lr, stages={stage.name: stage}),
        optim_of(cfg),
        {**trainer_kwargs(cfg.trainer), **one_process},
        callbacks=[sweep],
        root_dir=str(run.path),
        max_steps=settings.steps,
    )
    try:
        trainer.fit(model, datamodule=datamodule)
    except Diverged:  # a non-finite loss is where the range test ends
        sweep.diverged = True
    trainable = stage.trainable_groups(len(groups))
    lrs = stage.group_lrs(len(groups))
    result = RangeTest(
        stage=stage.name,
        groups={groups[k].name: lr / max(lrs) for k, lr in zip(trainable, lrs)},
        lrs=sweep.lrs[: len(sweep.losses)],
        losses=sweep.losses,
        smoothed=sweep.smoothed,
        diverged=sweep.diverged,
    )
    if result._usable() == 0:
        raise StagetuneError(f"the loss was not finite from the first step at lr {settings.start_lr}: lower lr_find.start_lr")
    write_json(run.path / "lr_find.json", result.as_dict())
    figure = plot(result)
    figure.savefig(run.path / "lr_find.png", dpi=90, bbox_inches="tight")
    with SummaryWriter(str(run.tensorboard)) as writer:
        for step, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed)):
            writer.add_scalar("lr_find/lr", lr, step)
            writer.add_scalar("lr_find/loss", loss, step)
            writer.add_scalar("lr_find/smoothed_loss", smooth, step)
        writer.add_figure("lr_find/loss_vs_lr", figure)
    run.update_metrics(status="completed", experiment=cfg.experiment, lr_find={k: v for k, v in result.as_dict().items() if k not in ("lrs", "losses", "smoothed")})
    return result


def plot(result: RangeTest):
    """Loss against LR (log scale), the smoothed curve, and the suggested rate."""
    fig = new_figure(6, 4)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="smoothed loss")
    ax.axvline(result.suggested_lr(), color="C3", ls="--", label=f"suggested {result.suggested_lr():.2e}")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), min(max(finite), 4 * min(finite)) * 1.05)
    ax.set_xlabel("learning rate (highest group)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test, stage '{result.stage}'")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return fig


def report(result: RangeTest, run: RunDir) -> str:
    value = result.suggested_stage_lr()
    shown = f"{value:.2e}" if isinstance(value, float) else "[" + ",".join(f"{v:.2e}" for v in value) + "]"
    status = "stopped when the loss diverged" if result.diverged else "reached the end of the range"
    return "\n".join(
        [
            f"stage '{result.stage}' (groups {', '.join(result.groups)}): {len(result.lrs)} steps, {status}",
            f"lr at the minimum loss / 10: {result.minimum_lr() / 10:.2e}   steepest descent: {result.steepest_lr():.2e}",
            f"suggested lr: {result.suggested_lr():.2e}",
            f"suggested override: plan.stages.{result.stage}.lr={shown}",
            f"plot: {run.path / 'lr_find.png'}",
            f"tensorboard: tensorboard --logdir {run.tensorboard}",
        ]
    )


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="lr_find")
@hydra_task("stagetune-lr-find")
def hydra_main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    result = run_range_test(cfg, run_dir, list(HydraConfig.get().overrides.task))
    print(report(result, RunDir(run_dir)))


def main() -> None:
    """Console entry point: ``stagetune-lr-find [key=value ...]``."""
    hydra_command("stagetune-lr-find", hydra_main)
