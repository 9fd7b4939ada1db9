"""SGD written from the formula, with weight decay stated as a loss term.

The update is ``w_t = w_{t-1} - lr * dL/dw_{t-1}`` where ``L = loss + wd * sum(w^2)``, so the
L2 step (``wd_kind="l2"``) adds ``2 * wd * w`` to the gradient. Torch's ``weight_decay=λ`` adds
``λ * w``, the derivative of ``(λ/2) * sum(w^2)``: this optimizer with ``wd`` equals
``torch.optim.SGD(weight_decay=2 * wd)``, and fastai's ``wd`` with ``decouple_wd=False`` (which
also adds ``wd * w``) equals ours at ``wd / 2``.

Decoupled decay (``wd_kind="decoupled"``) is not a loss term and never touches the gradient: the
weights shrink first, ``w *= 1 - lr * wd``, then take the gradient step, as torch's AdamW and
fastai's default do (fastai's ``wd`` is then the same number as ours). Without momentum this is
``torch.optim.SGD(weight_decay=wd)``; with momentum or under Adam it is a different rule.

With ``momentum`` ``m`` the step direction is the running ``buf = m * buf + g`` (torch's
convention, no dampening, ``buf = g`` on the first step), ``g`` being the gradient with its L2
term. A parameter whose ``grad`` is None (frozen, or unused by the loss) is left exactly as it is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from stagetune.engine.weight_decay import WdKind


class ScratchSGD(torch.optim.Optimizer):
    """Plain SGD from first principles; honours param groups (per-group lr, wd, momentum)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-2,
        momentum: float = 0.0,
        wd: float = 0.0,
        wd_kind: WdKind | str = WdKind.l2,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if wd < 0:
            raise ValueError(f"wd must be >= 0, got {wd}")
        super().__init__(params, dict(lr=lr, momentum=momentum, wd=wd, wd_kind=WdKind(wd_kind).value))  # a plain str: loads with weights_only=True

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd, kind = group["lr"], group["momentum"], group["wd"], group["wd_kind"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                grad = w.grad
                if wd and kind == "l2":
                    grad = grad.add(w, alpha=2 * wd)
                if momentum:
                    state = self.state[w]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(grad)
                    grad = state["momentum_buffer"]
                if wd and kind == "decoupled":
                    w.mul_(1 - lr * wd)
                w.add_(grad, alpha=-lr)
        return loss
