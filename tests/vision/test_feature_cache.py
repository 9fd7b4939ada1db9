"""Feature caching is exact, stays off when it would not be, and frozen groups compute no gradients."""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch

from stagetune.engine.cache import FeatureCache, compute_features
from stagetune.engine.groups import set_trainable
from stagetune.engine.plan import Stage
from stagetune.errors import ConfigError
from stagetune.vision.data import DigitsData
from stagetune.vision.models import ResNet34Classifier
from tests.helpers.plans import fit


def frozen_stage(train_bn: bool = False, epochs: int = 2) -> Stage:
    return Stage("frozen", epochs, -1, 1e-2, 0.01, schedule="constant", train_bn=train_bn)


def fit_cached(cache: str, data: DigitsData, *stages: Stage) -> ResNet34Classifier:
    """Fit a fresh (seeded) ResNet34 through ``stages``; no validation, logger or checkpoints."""
    pl.seed_everything(0, verbose=False)
    model = ResNet34Classifier(n_classes=3, weights=None)
    fit(model, data, *stages, batches=None, callbacks=(FeatureCache(cache),))
    return model


def digits(augment: bool = False) -> DigitsData:
    return DigitsData(size=16, classes=[1, 4, 7], train_per_class=8, batch_size=8, augment=augment)


def test_cached_head_outputs_equal_the_uncached_path():
    torch.manual_seed(0)
    model = ResNet34Classifier(n_classes=3, weights=None).eval()
    x = torch.randn(12, 3, 16, 16)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(12, dtype=torch.long)), batch_size=5)
    for group in (1, 2):
        features, _ = compute_features(model, loader, group, budget=1 << 30)
        with torch.no_grad():
            torch.testing.assert_close(model.forward_from(features, group), model(x), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_training_from_the_cache_follows_the_uncached_run(caplog):
    """Same batches, same dropout draws: the head trained from cached features ends where the uncached one does."""
    data = digits()
    unfrozen = Stage("unfrozen", 1, 0, 1e-3, 0.01, schedule="constant", train_bn=True)
    with caplog.at_level(logging.INFO, logger="stagetune"):
        cached = fit_cached("on", data, frozen_stage(), unfrozen)
    assert "plan.cache: stage 'frozen' trains from cached outputs of 2 groups for 24 examples" in caplog.text
    uncached = fit_cached("off", data, frozen_stage(), unfrozen)
    for (name, a), b in zip(cached.state_dict().items(), uncached.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    assert cached.input_group == 0


def test_cache_stays_off_with_one_line_when_bn_trains(caplog):
    with caplog.at_level(logging.INFO, logger="stagetune"):
        model = fit_cached("auto", digits(), frozen_stage(train_bn=True, epochs=1))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan.cache")]
    assert lines == [
        "plan.cache: stage 'frozen' trains without the feature cache: stage 'frozen' trains the normalisation layers of its frozen groups (train_bn: true)"
    ]
    assert model.input_group == 0


def test_cache_stays_off_with_one_line_under_augmentation(caplog):
    with caplog.at_level(logging.INFO, logger="stagetune"):
        fit_cached("auto", digits(augment=True), frozen_stage(epochs=2))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan.cache")]
    assert len(lines) == 1 and "data.augment is true" in lines[0]


def test_cache_on_when_inexact_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^plan.cache='on': stage 'frozen' cannot be cached exactly: .*train_bn"):
        fit_cached("on", digits(), frozen_stage(train_bn=True, epochs=1))


@pytest.mark.parametrize("train_bn", [False, True])
def test_frozen_body_step_computes_no_gradient_for_frozen_parameters(train_bn):
    model = ResNet34Classifier(n_classes=3, weights=None)
    groups = model.layer_groups()
    set_trainable(groups, -1, train_bn)
    features = model.body(torch.randn(4, 3, 16, 16))
    assert features.requires_grad == train_bn  # without train_bn autograd records nothing in the body
    model.loss(model.head(features), torch.tensor([0, 1, 2, 0])).backward()
    for group in groups[:-1]:
        norms = {id(p) for layer in group.norm_layers() for p in layer.parameters()}
        for p in group.parameters():
            assert (p.grad is not None) == (train_bn and id(p) in norms)
    assert all(p.grad is not None for p in groups[-1].parameters())
