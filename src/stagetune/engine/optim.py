"""Optimizers and LR schedules from config, with one weight-decay convention throughout.

``optim.wd`` (and a stage's ``wd``) always means the same thing whatever the optimizer:

* ``wd_kind: l2`` — the loss gains ``wd * sum(w^2)``, so the gradient gains ``2 * wd * w``.
  Torch's ``weight_decay`` adds ``weight_decay * w``; we therefore pass ``weight_decay = 2 * wd``.
* ``wd_kind: decoupled`` — each step shrinks the weights, ``w *= 1 - lr * wd`` (torch's AdamW,
  fastai's default). fastai's ``wd=0.01`` is this, with the same number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from stagetune.errors import ConfigError
from stagetune.engine.lazy_adam import LazyAdam
from stagetune.engine.sgd import ScratchSGD


@dataclass(frozen=True)
class OptimSpec:
    """The optimizer part of the config, as plain values."""

    name: str = "adam"
    wd: float = 0.01
    wd_kind: str = "decoupled"
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-5
    momentum: float = 0.9
    nesterov: bool = False
    bn_wd: bool = False
    bias_wd: bool = False

    @classmethod
    def from_config(cls, cfg) -> "OptimSpec":
        return cls(
            name=cfg.name,
            wd=float(cfg.wd),
            wd_kind=cfg.wd_kind,
            betas=(float(cfg.betas[0]), float(cfg.betas[1])),
            eps=float(cfg.eps),
            momentum=float(cfg.momentum),
            nesterov=bool(cfg.nesterov),
            bn_wd=bool(cfg.bn_wd),
            bias_wd=bool(cfg.bias_wd),
        )


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


def build_optimizer(groups: list[dict], spec: OptimSpec, sparse: bool = False) -> torch.optim.Optimizer:
    """An optimizer over ``groups``, whose ``weight_decay`` entries hold our ``wd`` convention.

    ``sparse``: the model's embeddings give sparse gradients; Adam becomes :class:`LazyAdam`.
    """
    if sparse:
        if spec.name != "adam":
            raise ConfigError("optim.name", spec.name, "model.sparse=true trains with adam only (it updates the rows a batch used)")
        torch_groups = [dict(g, wd=g["weight_decay"]) for g in groups]
        return LazyAdam(torch_groups, lr=torch_groups[0]["lr"], betas=spec.betas, eps=spec.eps, wd_kind=spec.wd_kind)
    torch_groups = []
    for g in groups:
        g = dict(g)
        wd = g.pop("weight_decay")
        g["wd"] = wd
        if spec.name == "sgd_scratch" or (spec.name == "sgd" and spec.wd_kind == "decoupled"):
            g["wd_kind"] = spec.wd_kind
        else:
            g["weight_decay"] = 2 * wd if spec.wd_kind == "l2" else wd
        torch_groups.append(g)
    lr = torch_groups[0]["lr"]
    if spec.name == "adam":
        cls = torch.optim.AdamW if spec.wd_kind == "decoupled" else torch.optim.Adam
        return cls(torch_groups, lr=lr, betas=spec.betas, eps=spec.eps)
    if spec.name == "sgd" and spec.wd_kind == "l2":
        return torch.optim.SGD(torch_groups, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov)
    return ScratchSGD(torch_groups, lr=lr, momentum=spec.momentum, wd_kind=spec.wd_kind)


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
    schedule: str,
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
    if schedule == "one_cycle":
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
    if schedule == "cosine":
        return LambdaLR(optimizer, _CosineFactor(total_steps, div_final))
    return LambdaLR(optimizer, _Constant())
