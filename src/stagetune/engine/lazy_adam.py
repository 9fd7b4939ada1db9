"""Adam that touches only the embedding rows a batch used: the optimizer for sparse embeddings.

Dense Adam updates every row of every embedding table at every step, so a step's cost grows
with the number of users and items, not with the batch: on MovieLens-10M-shaped tables (70k
users, 11k items) a batch of 1024 took about nine times longer per rating than on 100k-shaped
ones. With ``model.sparse: true`` the embeddings produce sparse gradients and this optimizer
updates the rows present in the batch, and only them: their moments, their weights and their
weight decay ("lazy" Adam, as ``torch.optim.SparseAdam`` and TensorFlow's LazyAdam do). Dense
gradients (an MLP on top of the embeddings) get plain Adam on the whole tensor.

The weight-decay convention is stagetune's (:mod:`stagetune.engine.weight_decay`), applied to the rows used:

* ``l2``: the rows' gradient gains ``2 * wd * w``;
* ``decoupled``: the rows shrink, ``w *= 1 - lr * wd``, before the Adam update (as AdamW).

When every row appears in every batch this is exactly Adam / AdamW (a test checks it); otherwise
rows absent from a batch keep their weights and moments to the bit, where dense Adam would keep
moving them on momentum and decay them. ``step`` counts the optimizer's steps for the bias
correction, per tensor, as SparseAdam does.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from stagetune.engine.weight_decay import WdKind


class LazyAdam(Optimizer):
    """Adam/AdamW over sparse (row-wise) and dense gradients; see the module doc for the semantics."""

    def __init__(
        self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-5, wd: float = 0.0, wd_kind: WdKind | str = WdKind.decoupled
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "wd": wd, "wd_kind": WdKind(wd_kind).value}
        )  # a plain str: checkpoints of it load with weights_only=True

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        wd, kind = group["wd"], group["wd_kind"]
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        if p.grad.is_sparse:
            grad = p.grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
        else:
            rows, values = None, p.grad
        view = (lambda x: x[rows]) if rows is not None else (lambda x: x)
        w = view(p)
        if wd and kind == "l2":
            values = values + 2 * wd * w
        if wd and kind == "decoupled":
            w = w * (1 - lr * wd)
        m = view(state["exp_avg"]).mul_(beta1).add_(values, alpha=1 - beta1)
        v = view(state["exp_avg_sq"]).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
        w = w.addcdiv(m, denom, value=-lr / (1 - beta1**t))
        if rows is None:
            p.copy_(w)
            state["exp_avg"].copy_(m)
            state["exp_avg_sq"].copy_(v)
        else:
            p.index_copy_(0, rows, w)
            state["exp_avg"].index_copy_(0, rows, m)
            state["exp_avg_sq"].index_copy_(0, rows, v)
