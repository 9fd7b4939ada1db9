"""ResNet34Classifier: its head, its three layer groups, freezing to the bit, slices, weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from stagetune.engine.groups import check_partition
from stagetune.engine.plan import Stage
from stagetune.errors import ConfigError, DataError
from stagetune.vision.models import ResNet34Classifier
from stagetune.vision.weights import imagenet_cache_path
from tests.helpers.plans import fit


def last_linear(model: ResNet34Classifier) -> nn.Linear:
    return [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("head", ["linear", "fastai"])
@pytest.mark.parametrize("n_classes", [2, 5, 37])
def test_head_has_one_output_per_class(head, n_classes):
    model = ResNet34Classifier(n_classes=n_classes, head=head, weights=None)
    assert last_linear(model).out_features == n_classes
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, n_classes)
    top5 = "top5" in model.metrics["val"]
    assert top5 == (n_classes > 5)


def test_fastai_head_matches_fastai_layers():
    head = ResNet34Classifier(n_classes=4, head="fastai", weights=None).head
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["AdaptiveConcatPool2d", "Flatten", "BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert (head[2].num_features, head[3].p, head[6].num_features, head[7].p) == (1024, 0.25, 512, 0.5)
    assert (head[4].in_features, head[4].out_features, head[4].bias, head[8].bias) == (1024, 512, None, None)


def test_unknown_head_is_a_config_error():
    with pytest.raises(ConfigError, match="model.head='mlp': allowed: linear, fastai"):
        ResNet34Classifier(n_classes=3, head="mlp", weights=None)


def test_three_layer_groups_partition_every_parameter_once():
    model = ResNet34Classifier(n_classes=3, weights=None)
    groups = model.layer_groups()
    assert [g.name for g in groups] == ["body_early", "body_late", "head"]
    check_partition(model, groups)
    names = {id(p): n for n, p in model.named_parameters()}
    owned = [[names[id(p)] for p in g.parameters()] for g in groups]
    assert sum(map(len, owned)) == len(names)
    assert {n.split(".")[1] for n in owned[0]} == {"conv1", "bn1", "layer1", "layer2"}
    assert {n.split(".")[1] for n in owned[1]} == {"layer3", "layer4"}
    assert all(n.startswith("head.") for n in owned[2])


def is_norm_param(model: nn.Module, name: str) -> bool:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


@pytest.mark.parametrize("train_bn", [True, False])
def test_frozen_stage_changes_only_the_head_and_batchnorm(digits, train_bn):
    model = ResNet34Classifier(weights=None, head="fastai", **digits.model_kwargs())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, digits, Stage("frozen", 1, freeze_to=-1, lr=1e-2, wd=0.1, train_bn=train_bn))
    after = model.state_dict()
    body_params = [n for n, _ in model.named_parameters() if n.startswith("body.")]
    frozen = [n for n in body_params if not (train_bn and is_norm_param(model, n))]
    assert all(torch.equal(before[n], after[n]) for n in frozen), "frozen weights moved"
    head = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    assert all(not torch.equal(before[n], after[n]) for n in head), "every head parameter trains"
    body_bn = [n for n in body_params if is_norm_param(model, n)]
    assert len(body_bn) == 2 * 36
    assert all(not torch.equal(before[n], after[n]) for n in body_bn) == train_bn
    running = [n for n in before if n.startswith("body.") and n.endswith("running_mean")]
    assert all(torch.equal(before[n], after[n]) for n in running) != train_bn


def test_after_unfreezing_each_group_gets_its_slice_rate(digits):
    model = ResNet34Classifier(weights=None, head="linear", **digits.model_kwargs())
    trainer = fit(
        model,
        digits,
        Stage("frozen", 1, freeze_to=-1, lr=1e-3, wd=0.01, schedule="constant"),
        Stage("unfrozen", 1, freeze_to=0, lr=(1e-5, 1e-3), wd=0.01, schedule="constant"),
        batches=1,
    )
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs == pytest.approx(
        {
            "body_early": 1e-5,
            "body_early/no_wd": 1e-5,
            "body_late": 1e-4,
            "body_late/no_wd": 1e-4,
            "head": 1e-3,
            "head/no_wd": 1e-3,
        },
        rel=1e-12,
    )
    assert all(p.requires_grad for p in model.parameters())


def body_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weights_from_a_state_dict_file(tmp_path):
    source = ResNet34Classifier(n_classes=5, weights=None)
    path = tmp_path / "source.pth"
    torch.save(source.state_dict(), path)
    target = ResNet34Classifier(n_classes=3, weights=str(path))
    assert body_equal(source.body, target.body)
    assert last_linear(target).out_features == 3

    plain = torchvision.models.resnet34(weights=None)
    torch.save(plain.state_dict(), tmp_path / "torchvision.pth")
    loaded = ResNet34Classifier(n_classes=3, weights=str(tmp_path / "torchvision.pth"))
    assert torch.equal(loaded.body.layer4[2].conv2.weight, plain.layer4[2].conv2.weight)


def test_weights_from_a_stagetune_checkpoint_keep_the_body_drop_the_head(digits, tmp_path):
    trained = ResNet34Classifier(weights=None, **digits.model_kwargs())
    trainer = fit(trained, digits, Stage("all", 1, freeze_to=0, lr=1e-3, wd=0.01), batches=1)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    assert "StagePlan" in str(torch.load(path, weights_only=True)["callbacks"].keys())
    target = ResNet34Classifier(n_classes=7, weights=str(path))
    assert body_equal(trained.body, target.body)
    assert last_linear(target).out_features == 7


def test_a_file_that_is_not_a_resnet34_is_a_clear_error(tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(DataError, match="not a resnet34 body"):
        ResNet34Classifier(n_classes=3, weights=str(tmp_path / "linear.pth"))
    with pytest.raises(DataError, match="no such file"):
        ResNet34Classifier(n_classes=3, weights=str(tmp_path / "absent.pth"))


def test_imagenet_weights_load_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    assert imagenet_cache_path() == expected
    with pytest.raises(DataError) as absent:
        ResNet34Classifier(n_classes=3, weights="imagenet")
    message = str(absent.value)
    assert str(expected) in message and "model.weights=null" in message and "TORCH_HOME" in message

    imagenet = torchvision.models.resnet34(weights=None)
    expected.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), expected)
    model = ResNet34Classifier(n_classes=3, weights="imagenet")
    assert torch.equal(model.body.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(model.body.layer3[0].bn1.running_var, imagenet.layer3[0].bn1.running_var)
