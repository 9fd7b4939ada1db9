"""The checks a run makes before it fits, on what only exists once it is built: a checkpoint to
continue from, and the splits the data gives."""

from __future__ import annotations

from omegaconf import DictConfig

from stagetune.engine.faults import check_checkpoint
from stagetune.engine.plan import Plan
from stagetune.errors import ConfigError, DataError, StagetuneError


def check_training_checkpoint(path: str, what: str, plan: Plan) -> int | None:
    """A checkpoint to continue from must be readable, hold stagetune's training state and have been made
    by this plan (the same stages, the same epochs in those it entered: its schedule is sized to them); its step."""
    data = check_checkpoint(path, what)
    if "state_dict" not in data or "StagePlan" not in data.get("callbacks", {}):
        raise StagetuneError(f"{what}: {path} is not a stagetune training checkpoint (no stage plan state in it)")
    state = data["callbacks"]["StagePlan"]
    plan = plan.for_groups(len(state.get("stages", [])))  # plan.gradual: the stages it generated for the model, one per layer group
    names = [stage.name for stage in plan.ordered]
    if state.get("stages") != names:
        raise ConfigError(what, path, f"made with the stages {state.get('stages')}; this plan has {names}: continue it with the plan it was made with")
    for row in state.get("history", []):
        epochs = plan.stages[row["stage"]].epochs
        if row.get("epochs") != epochs:
            raise ConfigError(
                what,
                path,
                f"made with plan.stages.{row['stage']}.epochs={row.get('epochs')}; this plan has {epochs}: a checkpoint "
                "continues the plan it was made with (its LR schedule is sized to it)",
            )
    return data.get("global_step")


def check_splits(cfg: DictConfig, datamodule, world_size: int) -> None:
    """Splits a run can use: a batch no larger than the training split (else one short batch per
    epoch), a validation split that is not empty (it chooses the checkpoint), and under DDP at
    least one validation and test example per process (a process with none would wait forever)."""
    batch_size = cfg.data.get("batch_size")
    n = len(datamodule.train_dataloader().dataset)
    if batch_size is not None and batch_size > n:
        raise ConfigError("data.batch_size", batch_size, f"the training split has {n} examples; use at most {n}")
    parts = {"validation": datamodule.val_dataloader().dataset}
    if cfg.test and getattr(datamodule, "has_test", False):
        parts["test"] = datamodule.test_dataloader().dataset
    for part, dataset in parts.items():
        size = len(dataset)
        if size == 0:
            keys = ("valid_pct", "n_valid") if part == "validation" else ("test_pct",)
            key = next((key for key in keys if key in cfg.data), None)
            if key is None:
                raise DataError(f"the {part} split is empty; it is what measures the run")
            raise ConfigError(f"data.{key}", cfg.data[key], f"the {part} split is empty; make it large enough to hold examples")
        if size < world_size:
            raise ConfigError(
                "trainer.devices",
                cfg.trainer.get("devices"),
                f"the {part} split has {size} example(s) for {world_size} processes; every process needs one: use at most {size} devices, or a larger split",
            )


def unmeasured_metric(cfg: DictConfig) -> str | None:
    """With validation off a validation metric is never measured: no best checkpoint is chosen and the
    metric a sweep optimises is NaN. The warning to print (None when the metric is measured)."""
    if cfg.trainer.get("limit_val_batches") != 0 or not str(cfg.metric).startswith("val/"):
        return None
    return (
        f"trainer.limit_val_batches=0: validation is off, so metric={cfg.metric} is never measured: no best checkpoint is "
        "chosen (the last one is evaluated) and metric.best is NaN; to choose by the training loss set metric=train/loss, "
        "or turn validation on"
    )
