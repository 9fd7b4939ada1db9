"""stagetune: staged fine-tuning for any LightningModule, with or without Hydra.

The engine's public API, for plain PyTorch Lightning (docs/own-model.md, examples/own_module.py)::

    from stagetune import LayerGroup, Plan, Stage, StagePlan, staged_optimizers

    class MyModel(pl.LightningModule):
        def layer_groups(self):                      # ordered; every parameter in exactly one
            return [LayerGroup("body", (self.body,)), LayerGroup("head", (self.head,))]

        def configure_optimizers(self):              # the plan's optimizer, rebuilt at each stage
            return staged_optimizers(self)

    plan = Plan(stages={"frozen": Stage(freeze_to=-1, epochs=2, lr=[1e-2]),
                        "unfrozen": Stage(freeze_to=0, epochs=3, lr=[1e-4, 1e-2])})
    pl.Trainer(max_epochs=plan.total_epochs, callbacks=[StagePlan(plan)]).fit(MyModel(), data)

- :class:`LayerGroup`: a name and the modules that own a slice of the model's parameters;
  :func:`groups_by_pattern` cuts any model into groups by regular expressions on its parameter names.
- :class:`Stage`: how long, which groups train (``freeze_to``), their rates (a number or a slice),
  weight decay, schedule; ``until`` (:class:`Until`) ends it on a monitored metric.
- :class:`Plan`: named stages run in order (or :class:`Gradual`: one stage per layer group).
- :class:`StagePlan`: the Lightning callback that applies a plan; ``StagePlan.of(trainer).active``
  is the running stage as a read-only :class:`StageView`.
- :func:`staged_optimizers` / :class:`StagedModule`: how a model takes its optimizer from the plan.
- :class:`Optim`, :class:`OptimizerName`, :class:`Schedule`, :class:`WdKind`: the optimizer every
  stage builds, its schedule inside a stage, and what ``wd`` means.
- :func:`slice_lrs`: how a learning rate spreads over layer groups (docs/learning-rates.md).

Names load on first use, so ``import stagetune`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "LayerGroup": "stagetune.engine.groups",
    "groups_by_pattern": "stagetune.engine.groups",
    "Stage": "stagetune.engine.plan",
    "Until": "stagetune.engine.plan",
    "Mode": "stagetune.engine.plan",
    "Gradual": "stagetune.engine.plan",
    "Plan": "stagetune.engine.plan",
    "StagePlan": "stagetune.engine.plan",
    "StageView": "stagetune.engine.plan",
    "StagedModule": "stagetune.engine.plan",
    "staged_optimizers": "stagetune.engine.plan",
    "Optim": "stagetune.engine.optim",
    "OptimizerName": "stagetune.engine.optim",
    "Schedule": "stagetune.engine.optim",
    "WdKind": "stagetune.engine.weight_decay",
    "slice_lrs": "stagetune.engine.learning_rate",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'stagetune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
