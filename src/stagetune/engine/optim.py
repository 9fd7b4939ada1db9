"""Optimizers and LR schedules from config, in stagetune's one weight-decay convention.

:class:`Optim` is both the Hydra schema of ``optim:`` and the value the code reads. Param groups
carry ``wd`` as :mod:`stagetune.engine.weight_decay` defines it; :func:`build_optimizer` is where it
becomes a torch optimizer's ``weight_decay`` (or stays ``wd`` for stagetune's own optimizers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from stagetune.engine.lazy_adam import LazyAdam
from stagetune.engine.sgd import ScratchSGD
from stagetune.engine.weight_decay import WdKind, torch_weight_decay
from stagetune.errors import ConfigError


class OptimizerName(StrEnum):
    """``adam`` (AdamW when decoupled), ``sgd`` (torch's), ``sgd_scratch`` (:class:`ScratchSGD`)."""

    adam = "adam"
    sgd = "sgd"
    sgd_scratch = "sgd_scratch"


class Schedule(StrEnum):
    """The LR schedule inside one stage."""

    one_cycle = "one_cycle"
    constant = "constant"
    cosine = "cosine"


@dataclass
class Optim:
    """The optimizer every stage of a plan builds afresh (fastai's defaults)."""

    name: OptimizerName = OptimizerName.adam  # adam (AdamW when decoupled), sgd (torch's), sgd_scratch (ScratchSGD)
    wd: float = 0.01  # weight decay of every group a stage does not set otherwise
    wd_kind: WdKind = WdKind.decoupled  # decoupled: w *= 1 - lr*wd; l2: the loss gains wd * sum(w^2)
    betas: tuple[float, float] = (0.9, 0.99)  # Adam's moment decays (fastai's; torch's beta2 is 0.999)
    eps: float = 1e-5  # Adam's epsilon (fastai's; torch's is 1e-8)
    momentum: float = 0.9  # SGD's momentum (buf = momentum * buf + g)
    nesterov: bool = False  # SGD with Nesterov momentum
    bn_wd: bool = False  # decay normalisation layers' weights too
    bias_wd: bool = False  # decay biases too

    def __post_init__(self) -> None:
        self.name, self.wd_kind = OptimizerName(self.name), WdKind(self.wd_kind)
        self.betas = tuple(float(b) for b in self.betas)

    def check(self, key: str = "optim") -> None:
        """Ranges a schema cannot express; each failure names its key."""
        check_non_negative(f"{key}.wd", self.wd)
        check_positive(f"{key}.eps", self.eps)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{key}.betas", self.betas, "two numbers in [0, 1)")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{key}.momentum", self.momentum, "must be in [0, 1)")


def check_positive(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(key, value, "must be > 0")


def check_non_negative(key: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(key, value, "must be >= 0")


def has_sparse_gradients(module: torch.nn.Module) -> bool:
    """Whether any embedding of ``module`` was built with ``sparse=True``."""
    return any(getattr(m, "sparse", False) for m in module.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)))


def check_sparse_training(module: torch.nn.Module, world_size: int, gradient_clip_val: float | None) -> None:
    """Sparse embedding gradients train in one process and without gradient clipping (both need dense ones)."""
    if not has_sparse_gradients(module):
        return
    if world_size > 1:
        raise ConfigError("model.sparse", True, f"sparse embeddings train in one process only (this run has {world_size}); use model.sparse=false")
    if gradient_clip_val:
        raise ConfigError("model.sparse", True, "gradient clipping (trainer.gradient_clip_val) needs dense gradients; use model.sparse=false")


def build_optimizer(groups: list[dict], spec: Optim, sparse: bool = False) -> torch.optim.Optimizer:
    """An optimizer over ``groups``, whose ``wd`` entries are in stagetune's convention.

    ``sparse``: the model's embeddings give sparse gradients; Adam becomes :class:`LazyAdam`.
    torch's own optimizers get ``weight_decay`` from :func:`torch_weight_decay`; stagetune's
    (LazyAdam, ScratchSGD, and SGD with decoupled decay, which torch has no rule for under
    momentum) read ``wd`` and ``wd_kind`` themselves.
    """
    name, kind = OptimizerName(spec.name), WdKind(spec.wd_kind)
    lr = groups[0]["lr"]
    if sparse:
        if name is not OptimizerName.adam:
            raise ConfigError("optim.name", name.value, "model.sparse=true trains with adam only (it updates the rows a batch used)")
        return LazyAdam(groups, lr=lr, betas=spec.betas, eps=spec.eps, wd_kind=kind)
    if name is OptimizerName.sgd_scratch or (name is OptimizerName.sgd and kind is WdKind.decoupled):
        return ScratchSGD(groups, lr=lr, momentum=spec.momentum, wd_kind=kind)
    torch_groups = [{**g, "weight_decay": torch_weight_decay(g["wd"], kind)} for g in groups]
    if name is OptimizerName.adam:
        cls = torch.optim.AdamW if kind is WdKind.decoupled else torch.optim.Adam
        return cls(torch_groups, lr=lr, betas=spec.betas, eps=spec.eps)
    return torch.optim.SGD(torch_groups, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov)


class _CosineFactor:
    """Cosine decay from 1 to ``1/div_final`` over ``total`` steps (a picklable LambdaLR factor)."""

    def __init__(self, total: int, div_final: float) -> None:
        self.total, self.floor = total, 1.0 / div_final

    def __call__(self, step: int) -> float:
        t = min(step, self.total) / self.total
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


class _Constant:
    def __call__(self, step: int) -> float:
        return 1.0


def has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    defaults = optimizer.defaults
    return "betas" in defaults or defaults.get("momentum", 0) > 0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Schedule | str,
    total_steps: int,
    pct_start: float,
    div: float,
    div_final: float,
) -> LRScheduler:
    """A schedule over one stage's steps; the param groups' ``lr`` entries are the peaks.

    ``one_cycle`` is fastai's: cosine warm-up from ``peak/div`` over ``pct_start`` of the steps,
    cosine annealing to ``peak/div_final``, momentum (Adam's beta1) cycling 0.95 -> 0.85 -> 0.95.
    """
    total_steps = max(1, total_steps)
    schedule = Schedule(schedule)
    if schedule is Schedule.one_cycle:
        if pct_start * total_steps == 1:  # torch's warm-up would end on step 0 and divide by zero (2 steps at 0.5, 4 at 0.25, ...)
            pct_start = math.nextafter(pct_start, 1.0)
        momentum = has_momentum(optimizer)
        return OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div,
            final_div_factor=div_final / div,
            anneal_strategy="cos",
            cycle_momentum=momentum,
            base_momentum=0.85,
            max_momentum=0.95,
        )
    if schedule is Schedule.cosine:
        return LambdaLR(optimizer, _CosineFactor(total_steps, div_final))
    return LambdaLR(optimizer, _Constant())
