"""The plan as a table, before anything trains: what ``stagetune-plan`` prints and a run prints at its start.

For each stage: its epochs (at most, for a stage with ``until``), its schedule, and for every layer
group its parameter count, whether it trains (``bn``: only its normalisation layers, under
``train_bn``, at the stage's lowest rate), its peak learning rate after the slice and ``plan.lr``
(``find`` shares until the range test ran) and its weight decay. It reads the stages as
:class:`~stagetune.engine.plan.StageView`, the same view a running fit gives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stagetune.engine.groups import LayerGroup
from stagetune.engine.learning_rate import shares
from stagetune.engine.optim import Optim
from stagetune.engine.plan import Plan, StageView


def _epochs(stage: StageView) -> str:
    text = f"epochs {stage.first_epoch + 1}-{stage.last_epoch + 1}"
    if stage.until is not None:
        until = stage.until
        text += f" at most, until {until.monitor} ({until.mode.value}) stops improving for {until.patience}"
        text += ", then its best weights" if stage.restore_best else ""
    return text


def _schedule(stage: StageView) -> str:
    if stage.schedule.value == "one_cycle":
        return f"one_cycle (pct_start {stage.pct_start:g}, div {stage.div:g}, div_final {stage.div_final:g})"
    return stage.schedule.value


def _rates(stage: StageView) -> list[str]:
    if stage.lrs is None:
        return [f"find x{share:.3g}" for share in shares(stage.lr, len(stage.groups))]
    return [f"{lr:.2e}" for lr in stage.lrs.values()]


def stages_table(stages: Sequence[StageView], groups: Sequence[LayerGroup], optim: Optim) -> str:
    """The stages ``stages`` of a model of layer groups ``groups`` trained with ``optim``, as text."""
    names = [g.name for g in groups]
    counts = [sum(p.numel() for p in g.parameters()) for g in groups]
    width = max(len("group"), *(len(n) for n in names))
    most = max(s.last_epoch for s in stages) + 1
    lines = [
        f"plan: {len(stages)} stage(s), {most} epochs at most; optimizer {optim.name.value}, "
        f"wd {optim.wd:g} ({optim.wd_kind.value}); {sum(counts):,} parameters"
    ]
    for stage in stages:
        rates = dict(zip(stage.groups, _rates(stage)))
        lines.append(f"stage {stage.name}: {_epochs(stage)}; {_schedule(stage)}")
        lines.append(f"  {'group':<{width}}  {'params':>12}  {'trains':<6}  {'lr':<12}  wd")
        for group, count in zip(groups, counts):
            bn = stage.train_bn and bool(group.norm_layers())
            trains = "yes" if group.name in rates else ("bn" if bn else "-")
            lr = rates.get(group.name, rates[stage.groups[0]] if bn else "-")  # a frozen group's norm layers train at the lowest rate
            wd = stage.wd.get(group.name, optim.wd) if isinstance(stage.wd, Mapping) else stage.wd
            lines.append(f"  {group.name:<{width}}  {count:>12,}  {trains:<6}  {lr:<12}  {f'{wd:g}' if group.name in rates else '-'}")
    return "\n".join(lines)


def plan_table(plan: Plan, groups: Sequence[LayerGroup], optim: Optim) -> str:
    """The table of ``plan`` (before it runs) for a model of layer groups ``groups``."""
    plan = plan.for_groups(len(groups))
    return stages_table(plan.views([g.name for g in groups], optim.wd), groups, optim)
