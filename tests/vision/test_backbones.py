"""Every listed torchvision family: three layer groups holding each parameter once, a frozen stage
that trains only the head to the bit, a tiny batch through forward and backward, and its weights."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from stagetune.build import build
from stagetune.engine.groups import check_partition
from stagetune.engine.plan import Stage
from stagetune.errors import ConfigError, DataError
from stagetune.vision.backbones import supported
from stagetune.vision.data import DigitsData
from stagetune.vision.models import TorchvisionClassifier
from stagetune.vision.weights import cache_path, published
from tests.helpers.cli import run_cli
from tests.helpers.plans import fit
from tests.vision.test_vision_cli import QUIET

# The smallest of each family; vit at 32 px (torchvision's image_size) to stay small.
SMALLEST = {
    "resnet18": {},
    "resnext50_32x4d": {},
    "wide_resnet50_2": {},
    "densenet121": {},
    "efficientnet_b0": {},
    "efficientnet_v2_s": {},
    "mobilenet_v2": {},
    "mobilenet_v3_small": {},
    "regnet_x_400mf": {},
    "convnext_tiny": {},
    "vit_b_16": {"image_size": 32},
}


@pytest.fixture(scope="module")
def images() -> DigitsData:
    return DigitsData(size=32, classes=[1, 4, 7], batch_size=4, train_per_class=4)


def model_of(arch: str, **kwargs) -> TorchvisionClassifier:
    return TorchvisionClassifier(arch, n_classes=3, weights=None, arch_kwargs=SMALLEST[arch], **kwargs)


def test_every_family_of_the_issue_is_covered():
    names = supported()
    for prefix in (
        "resnet",
        "resnext",
        "wide_resnet",
        "densenet",
        "efficientnet_b",
        "efficientnet_v2",
        "mobilenet_v2",
        "mobilenet_v3",
        "regnet",
        "convnext",
        "vit",
    ):
        assert any(n.startswith(prefix) for n in names), prefix
    assert {"resnet18", "resnet152", "efficientnet_v2_l", "vit_h_14", "regnet_y_128gf"} <= set(names)


@pytest.mark.parametrize("arch", SMALLEST)
def test_a_family_gives_three_groups_a_frozen_stage_trains_only_the_head_and_a_batch_trains_end_to_end(arch, images):
    torch.manual_seed(0)
    model = model_of(arch, head="fastai")
    groups = model.layer_groups()
    assert [g.name for g in groups] == ["body_early", "body_late", "head"]
    check_partition(model, groups)
    counts = [len(g.parameters()) for g in groups]
    assert sum(counts) == len(list(model.parameters())) and all(counts)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, images, Stage("frozen", 1, freeze_to=-1, lr=1e-2, train_bn=False, schedule="constant"), batches=1)
    after = model.state_dict()
    body = [k for k in before if k.startswith("body.")]
    assert body and all(torch.equal(before[k], after[k]) for k in body), "a frozen body tensor moved"
    last = [n for n, m in model.head.named_modules() if isinstance(m, nn.Linear)][-1]
    assert not torch.equal(before[f"head.{last}.weight"], after[f"head.{last}.weight"]), "the head trains"

    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    x, y = next(iter(images.train_dataloader()))
    nn.functional.cross_entropy(model(x[:2]), y[:2]).backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter gets a gradient"


def test_the_linear_head_is_sized_to_the_classes_and_pools_only_feature_maps():
    conv = TorchvisionClassifier("mobilenet_v3_small", n_classes=4, head="linear", weights=None)
    assert [type(m).__name__ for m in conv.head] == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert (conv.head[-1].in_features, conv.head[-1].out_features) == (576, 4)
    vit = model_of("vit_b_16", head="linear")
    assert [type(m).__name__ for m in vit.head] == ["Linear"] and vit.head[0].in_features == 768
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_resnet_family_groups_are_fastais_split_for_every_depth():
    model = TorchvisionClassifier("resnet50", n_classes=3, weights=None)
    early, late, _ = model.layer_groups()
    assert early.modules == tuple(getattr(model.body, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2"))
    assert late.modules == (model.body.layer3, model.body.layer4)


def test_a_torchvision_state_dict_and_the_hub_cache_load_into_the_body(tmp_path, monkeypatch):
    plain = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    torch.save(plain.state_dict(), tmp_path / "mine.pth")
    loaded = TorchvisionClassifier("mobilenet_v3_small", n_classes=3, weights=str(tmp_path / "mine.pth"))
    assert torch.equal(loaded.body.features[5].block[0][0].weight, plain.features[5].block[0][0].weight)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = cache_path(published("mobilenet_v3_small", "imagenet"))
    assert expected == tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    with pytest.raises(DataError) as absent:
        TorchvisionClassifier("mobilenet_v3_small", n_classes=3, weights="imagenet")
    assert str(expected) in str(absent.value) and "model.weights=null" in str(absent.value) and "\n" not in str(absent.value)
    expected.parent.mkdir(parents=True)
    torch.save(plain.state_dict(), expected)
    cached = TorchvisionClassifier("mobilenet_v3_small", n_classes=3, weights="IMAGENET1K_V1")
    assert torch.equal(cached.body.features[0][1].running_var, plain.features[0][1].running_var)


def test_densenet_files_with_the_published_key_names_load(tmp_path):
    """torchvision's DenseNet files name ``norm.1`` what the module calls ``norm1``."""
    plain = torchvision.models.get_model("densenet121", weights=None)
    old = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in plain.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "densenet.pth")
    model = TorchvisionClassifier("densenet121", n_classes=3, weights=str(tmp_path / "densenet.pth"))
    assert torch.equal(model.body.features.denseblock4.denselayer16.conv2.weight, plain.features.denseblock4.denselayer16.conv2.weight)


def test_bad_architectures_weights_and_sizes_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"model.arch='alexnet': a torchvision classification model of a supported family: resnet"):
        TorchvisionClassifier("alexnet", n_classes=3, weights=None)
    with pytest.raises(ConfigError, match="model.arch_kwargs="):
        TorchvisionClassifier("resnet18", n_classes=3, weights=None, arch_kwargs={"depth": 3})
    with pytest.raises(DataError, match=r"model.weights=.*absent.pth: no such file \(use imagenet, IMAGENET1K_V1"):
        TorchvisionClassifier("resnet18", n_classes=3, weights=str(tmp_path / "absent.pth"))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(DataError, match="does not fit a resnet50 body|not a resnet50 body"):
        TorchvisionClassifier("resnet50", n_classes=3, weights=str(tmp_path / "r18.pth"))


def test_a_vit_refuses_images_of_another_size_before_training(images):
    with pytest.raises(ConfigError, match=r"model.arch_kwargs.image_size=224: vit_b_16 takes images of its image_size and data.size is 32"):
        fit(TorchvisionClassifier("vit_b_16", n_classes=3, weights=None), images, Stage("frozen", 1, freeze_to=-1, lr=1e-2))


def test_patterns_in_config_regroup_a_backbone():
    node = OmegaConf.create(
        {
            "_target_": "stagetune.vision.models.TorchvisionClassifier",
            "arch": "resnet18",
            "weights": None,
            "n_classes": 3,
            "groups": {"body": "body", "head": "head"},
        }
    )
    model = build(node)
    assert [g.name for g in model.layer_groups()] == ["body", "head"]
    check_partition(model, model.layer_groups())


def test_digits_transfer_trains_a_convnext_through_the_command_line(tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "experiment=digits_transfer",
        "model=torchvision",
        "model.arch=convnext_tiny",
        "model.weights=null",
        "data.size=32",
        "data.train_per_class=2",
        "data.batch_size=10",
        "plan.stages.frozen.epochs=1",
        "plan.stages.unfrozen.epochs=1",
        *QUIET,
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0 <= metrics["test"]["test/acc"] <= 1
    assert [s["stage"] for s in metrics["stages"]] == ["frozen", "unfrozen"]
    assert metrics["stages"][0]["trainable_groups"] == ["head"]
    assert metrics["stages"][1]["lr"] == pytest.approx({"body_early": 2e-4, "body_late": 2e-4 * 10**0.5, "head": 2e-3})
