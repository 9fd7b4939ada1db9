"""The plan as a table, before anything trains: what ``stagetune-plan`` prints and a run prints at its start.

For each stage: its epochs (at most, for a stage with ``until``), its schedule, and for every layer
group its parameter count, whether it trains (``bn``: only its normalisation layers, under ``train_bn``, at
the stage's lowest rate),
its peak learning rate after the slice and ``plan.lr`` (``find`` shares until the range test ran)
and its weight decay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stagetune.engine.groups import LayerGroup
from stagetune.engine.learning_rate import group_rates, shares
from stagetune.engine.optim import Optim
from stagetune.engine.plan import Plan, Stage


def _epochs(stage: Stage, first: int) -> str:
    last = first + stage.max_epochs
    text = f"epochs {first + 1}-{last}"
    if stage.until is not None:
        until = stage.until
        text += f" at most, until {until.monitor} ({until.mode.value}) stops improving for {until.patience}"
        text += ", then its best weights" if stage.restore_best else ""
    return text


def _schedule(stage: Stage) -> str:
    if stage.schedule.value == "one_cycle":
        return f"one_cycle (pct_start {stage.pct_start:g}, div {stage.div:g}, div_final {stage.div_final:g})"
    return stage.schedule.value


def _rates(stage: Stage, n_trainable: int, found: float | None) -> list[str]:
    if stage.finds_lr and found is None:
        return [f"find x{share:.3g}" for share in shares(stage.lr, n_trainable)]
    return [f"{lr:.2e}" for lr in group_rates(stage.lr, n_trainable, found)]


def plan_table(plan: Plan, groups: Sequence[LayerGroup], optim: Optim, found: Mapping[str, float] | None = None) -> str:
    """The plan ``plan`` for a model of layer groups ``groups``, as text (``found``: rates of ``lr=find`` stages that ran)."""
    plan = plan.for_groups(len(groups))
    names = [g.name for g in groups]
    counts = [sum(p.numel() for p in g.parameters()) for g in groups]
    width = max(len("group"), *(len(n) for n in names))
    lines = [
        f"plan: {len(plan.stages)} stage(s), {plan.total_epochs} epochs at most; optimizer {optim.name.value}, "
        f"wd {optim.wd:g} ({optim.wd_kind.value}); {sum(counts):,} parameters"
    ]
    first = 0
    for stage in plan.ordered:
        trainable = stage.trainable_groups(len(groups))
        rates = dict(zip(trainable, _rates(stage, len(trainable), (found or {}).get(stage.name))))
        wds = stage.group_wds(names, optim.wd)
        lines.append(f"stage {stage.name}: {_epochs(stage, first)}; {_schedule(stage)}")
        lines.append(f"  {'group':<{width}}  {'params':>12}  {'trains':<6}  {'lr':<12}  wd")
        for k, group in enumerate(groups):
            bn = stage.train_bn and bool(group.norm_layers())
            trains = "yes" if k in rates else ("bn" if bn else "-")
            lr = rates.get(k, rates[trainable[0]] if bn else "-")  # a frozen group's norm layers train at the lowest rate
            wd = f"{wds[group.name]:g}" if k in rates else "-"
            lines.append(f"  {group.name:<{width}}  {counts[k]:>12,}  {trains:<6}  {lr:<12}  {wd}")
        first += stage.max_epochs
    return "\n".join(lines)
