"""LazyAdam: exactly Adam/AdamW (our wd convention) when every row is used; untouched rows stay put."""

import pytest
import torch
from torch import nn

from stagetune.engine.lazy_adam import LazyAdam
from stagetune.engine.optim import Optim, build_optimizer, has_sparse_gradients
from stagetune.errors import ConfigError

STEPS, LR, WD, BETAS, EPS = 20, 1e-2, 0.1, (0.9, 0.99), 1e-5


def tables(sparse: bool) -> nn.Module:
    torch.manual_seed(0)
    module = nn.ModuleDict({"emb": nn.Embedding(6, 3, sparse=sparse), "lin": nn.Linear(3, 1)})
    return module.double()


def loss(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return module["lin"](module["emb"](rows)).pow(2).mean()


def train(optimizer_for, sparse: bool, batches) -> nn.Module:
    module = tables(sparse)
    optimizer = optimizer_for(module)
    for rows in batches:
        optimizer.zero_grad()
        loss(module, rows).backward()
        optimizer.step()
    return module


@pytest.mark.parametrize("kind", ["l2", "decoupled"])
def test_every_row_in_every_batch_equals_torch_adam(kind):
    batches = [torch.randperm(6) for _ in range(STEPS)]
    lazy = train(lambda m: LazyAdam(m.parameters(), lr=LR, betas=BETAS, eps=EPS, wd=WD, wd_kind=kind), True, batches)
    torch_cls = torch.optim.Adam if kind == "l2" else torch.optim.AdamW
    decay = 2 * WD if kind == "l2" else WD  # stagetune's convention: l2 means loss + wd * sum(w^2)
    dense = train(lambda m: torch_cls(m.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=decay), False, batches)
    for name, p in lazy.named_parameters():
        torch.testing.assert_close(p, dict(dense.named_parameters())[name], rtol=0, atol=1e-12, msg=name)


def test_rows_a_batch_did_not_use_keep_weights_and_moments_to_the_bit():
    module = tables(True)
    optimizer = LazyAdam(module.parameters(), lr=LR, wd=WD)
    for rows in (torch.tensor([0, 1, 2]), torch.tensor([1, 2])):
        before = module["emb"].weight.detach().clone()
        moments = {k: v.clone() for k, v in optimizer.state[module["emb"].weight].items() if torch.is_tensor(v)}
        optimizer.zero_grad()
        loss(module, rows).backward()
        optimizer.step()
        after = module["emb"].weight.detach()
        unused = [r for r in range(6) if r not in rows.tolist()]
        assert torch.equal(after[unused], before[unused])
        assert not torch.equal(after[rows], before[rows])
        for key, value in moments.items():
            assert torch.equal(optimizer.state[module["emb"].weight][key][unused], value[unused]), key


def test_build_optimizer_picks_lazy_adam_for_sparse_models_and_refuses_other_optimizers():
    module = tables(True)
    assert has_sparse_gradients(module) and not has_sparse_gradients(tables(False))
    groups = [{"params": list(module.parameters()), "lr": LR, "wd": WD}]
    optimizer = build_optimizer(groups, Optim(name="adam", wd_kind="l2"), sparse=True)
    assert isinstance(optimizer, LazyAdam) and optimizer.param_groups[0]["wd_kind"] == "l2"
    with pytest.raises(ConfigError, match="optim.name"):
        build_optimizer(groups, Optim(name="sgd"), sparse=True)
