"""ScratchSGD against the formula, against torch.optim, and through the config pipeline.

Our ``wd`` with ``wd_kind: l2`` is the coefficient of ``wd * sum(w^2)`` in the loss; torch's
``weight_decay`` is the coefficient of ``w`` added to the gradient. These tests pin that factor of
two, and show what decoupled decay does differently (it is not a loss term at all).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from stagetune.app import conf_dir
from stagetune.config import optim_of, plan_of, validate
from stagetune.engine.groups import LayerGroup, param_groups
from stagetune.engine.optim import build_optimizer
from stagetune.engine.plan import StagePlan
from stagetune.engine.sgd import ScratchSGD
from tests.tiny import quiet_trainer

STEPS = 100
TOL = 1e-6


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
        out.append((x, x.sum(1, keepdim=True).sin()))
    return out


def train(model: nn.Module, optimizer: torch.optim.Optimizer, penalty: float = 0.0) -> nn.Module:
    """``STEPS`` steps of MSE (plus ``penalty * sum(w^2)`` over every parameter when given)."""
    for x, y in batches():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        if penalty:
            loss = loss + penalty * sum((w**2).sum() for w in model.parameters())
        loss.backward()
        optimizer.step()
    return model


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_l2_wd_equals_torch_sgd_with_twice_the_weight_decay(momentum):
    wd, lr = 0.05, 0.05
    ours = train(m := small_model(), ScratchSGD(m.parameters(), lr=lr, momentum=momentum, wd=wd))
    theirs = train(t := small_model(), torch.optim.SGD(t.parameters(), lr=lr, momentum=momentum, weight_decay=2 * wd))
    half = train(h := small_model(), torch.optim.SGD(h.parameters(), lr=lr, momentum=momentum, weight_decay=wd))
    assert max_diff(ours, theirs) < TOL
    assert max_diff(ours, half) > 1e-3  # the factor of two is visible, so the check above has teeth


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_l2_wd_equals_plain_sgd_on_the_loss_with_the_penalty_written_out(momentum):
    wd, lr = 0.05, 0.05
    ours = train(m := small_model(), ScratchSGD(m.parameters(), lr=lr, momentum=momentum, wd=wd))
    explicit = train(e := small_model(), torch.optim.SGD(e.parameters(), lr=lr, momentum=momentum), penalty=wd)
    assert max_diff(ours, explicit) < TOL
    no_wd = train(n := small_model(), ScratchSGD(n.parameters(), lr=lr, momentum=momentum))
    assert max_diff(ours, no_wd) > 1e-3


def test_scratch_sgd_step_is_the_formula():
    """One step by hand: ``w - lr * (grad + 2*wd*w)``."""
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    w.grad = torch.tensor([0.5, 0.5], dtype=torch.float64)
    ScratchSGD([w], lr=0.1, wd=0.05).step()
    assert torch.allclose(w, torch.tensor([1 - 0.1 * (0.5 + 0.1), -2 - 0.1 * (0.5 - 0.2)], dtype=torch.float64))
    assert w.tolist() == pytest.approx([0.94, -2.03], abs=1e-12)


def test_decoupled_sgd_without_momentum_is_torch_weight_decay_wd():
    """``w*(1-lr*wd) - lr*g == w - lr*(g + wd*w)``: for plain SGD, decoupled wd is torch's wd (half our L2)."""
    wd, lr = 0.05, 0.05
    ours = train(m := small_model(), ScratchSGD(m.parameters(), lr=lr, wd=wd, wd_kind="decoupled"))
    theirs = train(t := small_model(), torch.optim.SGD(t.parameters(), lr=lr, weight_decay=wd))
    assert max_diff(ours, theirs) < TOL
    with_momentum = train(mm := small_model(), ScratchSGD(mm.parameters(), lr=lr, momentum=0.9, wd=wd, wd_kind="decoupled"))
    torch_momentum = train(tm := small_model(), torch.optim.SGD(tm.parameters(), lr=lr, momentum=0.9, weight_decay=wd))
    assert max_diff(with_momentum, torch_momentum) > 1e-4  # with momentum the two are different rules


def test_decoupled_shrinks_an_idle_weight_by_exactly_one_minus_lr_wd_per_step_under_adam():
    """A weight with zero gradient: AdamW multiplies it by ``1 - lr*wd`` each step, nothing else."""
    lr, wd, n = 1e-3, 0.1, STEPS
    w = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=wd)
    for _ in range(n):
        w.grad = torch.zeros_like(w)
        opt.step()
    assert torch.allclose(w, torch.full_like(w, (1 - lr * wd) ** n), rtol=0, atol=1e-12)
    assert 1 - w[0].item() == pytest.approx(lr * wd * n, rel=1e-2)  # about 1e-2 after 100 steps


def idle_weight_after(optimizer_cls, weight_decay: float, lr: float, n: int) -> float:
    """How far a weight starting at 1 with zero loss gradient moves in ``n`` steps."""
    w = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = optimizer_cls([w], lr=lr, weight_decay=weight_decay)
    for _ in range(n):
        w.grad = torch.zeros_like(w)
        opt.step()
    return (1 - w).max().item()


def test_l2_under_adam_moves_an_idle_weight_by_lr_per_step_whatever_wd():
    """With L2 the decay term is the whole gradient, and Adam divides it by its own size.

    The weight moves about ``lr`` per step (``2*wd*w / sqrt((2*wd*w)^2)``) for ``wd=1e-4`` as for
    ``wd=1e-2``: a 100x stronger decay gives the same step. Decoupled decay stays proportional to wd.
    """
    lr, n = 1e-3, 10
    weak = idle_weight_after(torch.optim.Adam, 2 * 1e-4, lr, n)
    strong = idle_weight_after(torch.optim.Adam, 2 * 1e-2, lr, n)
    assert weak == pytest.approx(strong, abs=TOL)
    assert weak == pytest.approx(lr * n, rel=1e-3)

    weak_decoupled = idle_weight_after(torch.optim.AdamW, 1e-4, lr, n)
    strong_decoupled = idle_weight_after(torch.optim.AdamW, 1e-2, lr, n)
    assert weak_decoupled == pytest.approx(1 - (1 - lr * 1e-4) ** n, abs=1e-15)
    assert strong_decoupled == pytest.approx(1 - (1 - lr * 1e-2) ** n, abs=1e-15)
    assert strong_decoupled / weak_decoupled == pytest.approx(100, rel=1e-2)
    assert strong_decoupled < strong / 90


def test_decoupled_and_l2_under_adam_train_to_different_weights():
    lr, wd = 1e-2, 0.05
    adamw = train(a := small_model(), torch.optim.AdamW(a.parameters(), lr=lr, weight_decay=wd))
    adam_l2 = train(b := small_model(), torch.optim.Adam(b.parameters(), lr=lr, weight_decay=2 * wd))
    assert max_diff(adamw, adam_l2) > 1e-2


def test_param_groups_get_their_own_learning_rate():
    """Two groups at different rates: the same trajectory as torch's SGD with the same groups."""
    lr_body, lr_head, wd = 0.01, 0.1, 0.02

    def groups(model, key):
        return [
            {"params": model[0].parameters(), "lr": lr_body, key: wd if key == "wd" else 2 * wd},
            {"params": model[2].parameters(), "lr": lr_head, key: wd if key == "wd" else 2 * wd},
        ]

    ours = train(m := small_model(), ScratchSGD(groups(m, "wd"), lr=1.0, momentum=0.9))
    theirs = train(t := small_model(), torch.optim.SGD(groups(t, "weight_decay"), lr=1.0, momentum=0.9))
    assert max_diff(ours, theirs) < TOL

    w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    v = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    w.grad, v.grad = torch.ones_like(w), torch.ones_like(v)
    ScratchSGD([{"params": [w], "lr": 0.1}, {"params": [v], "lr": 0.01}]).step()
    assert (w.item(), v.item()) == pytest.approx((0.9, 0.99), abs=1e-15)


@pytest.mark.parametrize("wd_kind", ["l2", "decoupled"])
def test_frozen_and_gradless_parameters_do_not_change_by_a_bit(wd_kind):
    model = small_model()
    model[0].requires_grad_(False)
    before = copy.deepcopy(model)
    idle = nn.Parameter(torch.randn(4, dtype=torch.float64))
    idle_before = idle.detach().clone()
    opt = ScratchSGD([*model.parameters(), idle], lr=0.1, momentum=0.9, wd=0.1, wd_kind=wd_kind)
    train(model, opt)
    assert all(torch.equal(p, q) for p, q in zip(model[0].parameters(), before[0].parameters()))
    assert torch.equal(idle, idle_before)
    assert not torch.equal(model[2].weight, before[2].weight)


@pytest.mark.parametrize(
    "kwargs",
    [{"lr": 0.0}, {"momentum": 1.0}, {"wd": -0.1}, {"wd_kind": "coupled"}],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        ScratchSGD([nn.Parameter(torch.ones(1))], **kwargs)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return validate(compose("train", overrides=list(overrides)))


def one_layer_group() -> list[LayerGroup]:
    return [LayerGroup("all", (nn.Linear(2, 1),))]


def test_config_optim_sgd_scratch_builds_scratch_sgd_with_the_configured_wd():
    cfg = composed("optim=sgd_scratch", "optim.wd=0.03", "optim.momentum=0.5")
    stage, optim = plan_of(cfg).ordered[0], optim_of(cfg)
    opt = build_optimizer(param_groups(one_layer_group(), [0], stage.lr, optim.wd), optim)
    assert type(opt) is ScratchSGD
    assert opt.param_groups[0]["wd"] == 0.03
    assert opt.param_groups[0]["wd_kind"] == "l2"
    assert opt.param_groups[0]["momentum"] == 0.5
    assert opt.param_groups[1]["wd"] == 0.0  # the bias is exempt (optim.bias_wd false)


def test_sgd_line_trains_with_scratch_sgd_through_the_stage_plan(tmp_path):
    """The real recipe: config -> data, model, plan -> Trainer with StagePlan -> ScratchSGD steps."""
    cfg = composed("experiment=sgd_line")
    data = instantiate(cfg.data)
    model = instantiate(cfg.model, **data.model_kwargs())
    plan = plan_of(cfg)
    start = (model.line.a.item(), model.line.b.item())
    trainer = quiet_trainer(max_epochs=1, max_steps=3, callbacks=[StagePlan(plan, optim_of(cfg))], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    opt = trainer.optimizers[0]
    assert type(opt) is ScratchSGD
    assert [(g["name"], g["lr"], g["momentum"], g["wd_kind"]) for g in opt.param_groups] == [("line", 0.05, 0.0, "l2")]
    assert (model.line.a.item(), model.line.b.item()) != start
    assert (tmp_path / "sgd_line.png").exists()
