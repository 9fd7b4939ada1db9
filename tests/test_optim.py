"""The weight-decay convention, checked on single steps computed by hand."""

import math

import pytest
import torch

from stagetune.engine.optim import Optim, build_optimizer, build_scheduler
from stagetune.engine.sgd import ScratchSGD

W0 = [1.0, -2.0]
C = [0.5, 0.25]  # loss = sum(C * w), so dL/dw = C
LR, WD = 0.1, 0.05


def one_step(spec: Optim) -> tuple[torch.optim.Optimizer, list[float]]:
    w = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = build_optimizer([{"params": [w], "lr": LR, "wd": WD}], spec)
    (w * torch.tensor(C, dtype=torch.float64)).sum().backward()
    opt.step()
    return opt, w.detach().tolist()


def test_sgd_l2_adds_twice_wd_times_w_to_the_gradient():
    opt, w = one_step(Optim(name="sgd", wd_kind="l2", momentum=0.0))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(2 * WD)
    expected = [w0 - LR * (c + 2 * WD * w0) for w0, c in zip(W0, C)]
    assert w == pytest.approx(expected, abs=1e-12)


def test_sgd_decoupled_shrinks_weights_then_steps():
    opt, w = one_step(Optim(name="sgd", wd_kind="decoupled", momentum=0.0))
    assert isinstance(opt, ScratchSGD)
    expected = [w0 * (1 - LR * WD) - LR * c for w0, c in zip(W0, C)]
    assert w == pytest.approx(expected, abs=1e-12)


def test_adam_decoupled_is_adamw_with_the_same_wd():
    opt, w = one_step(Optim(name="adam", wd_kind="decoupled", eps=1e-5))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(WD)
    # first Adam step: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
    expected = [w0 * (1 - LR * WD) - LR * c / (abs(c) + 1e-5) for w0, c in zip(W0, C)]
    assert w == pytest.approx(expected, abs=1e-12)


def test_adam_l2_folds_twice_wd_times_w_into_the_gradient():
    opt, w = one_step(Optim(name="adam", wd_kind="l2", eps=1e-5))
    assert type(opt) is torch.optim.Adam
    g = [c + 2 * WD * w0 for w0, c in zip(W0, C)]
    expected = [w0 - LR * gi / (abs(gi) + 1e-5) for w0, gi in zip(W0, g)]
    assert w == pytest.approx(expected, abs=1e-12)


def test_fastai_adam_defaults_are_the_config_defaults():
    spec = Optim()
    assert (spec.name, spec.wd, spec.wd_kind, spec.betas, spec.eps) == ("adam", 0.01, "decoupled", (0.9, 0.99), 1e-5)


def lrs_over(schedule: str, steps: int, **kw) -> list[float]:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [w], "lr": 1e-2}])
    sched = build_scheduler(opt, schedule, steps, **{"pct_start": 0.25, "div": 25.0, "div_final": 1e5, **kw})
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_one_cycle_is_fastais():
    lrs = lrs_over("one_cycle", 100)
    assert lrs[0] == pytest.approx(1e-2 / 25)
    assert max(lrs) == pytest.approx(1e-2, rel=1e-3)
    assert lrs.index(max(lrs)) in (24, 25)
    assert lrs[-1] == pytest.approx(1e-2 / 1e5, rel=0.05)


def test_cosine_and_constant():
    cos = lrs_over("cosine", 50)
    assert cos[0] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(cos, cos[1:]))
    assert cos[25] == pytest.approx(1e-2 * (1e-5 + (1 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lrs_over("constant", 10) == [1e-2] * 10
