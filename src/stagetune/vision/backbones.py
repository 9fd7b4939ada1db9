"""torchvision classification backbones cut before their classifier, in three layer groups by family.

Each family says which of torchvision's modules make the body (everything before the pooling and
the classifier, module names unchanged so torchvision's state dicts load as they are) and how the
body splits into an early and a late group; the classifier's head is always new (models.py). The
rule per family, as docs/own-backbone.md states it:

==============  ===================================================  ==================================
family          body_early                                           body_late
==============  ===================================================  ==================================
resnet          conv1, bn1, relu, maxpool, layer1, layer2            layer3, layer4 (fastai's split;
(resnext,                                                            resnext and wide_resnet alike)
wide_resnet)
densenet        features[:7]: conv0 .. denseblock2                   features[7:]: transition2 .. norm5
                                                                     (fastai's split), then the ReLU
efficientnet,   features[:n//2] (stem and the first half of the      features[n//2:]
mobilenet,      blocks, n = len(features))
convnext
regnet          stem, trunk_output.block1, block2                    trunk_output.block3, block4
vit             conv_proj, class_token, encoder.pos_embedding,       encoder.layers[n//2:], encoder.ln
                encoder.layers[:n//2]
==============  ===================================================  ==================================

The convolutional bodies give a feature map (pooled by the head); vit's gives the class token's
vector, so its head does not pool.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torchvision
from torch import nn

from stagetune.engine.groups import LayerGroup
from stagetune.errors import ConfigError

Split = Callable[[nn.Module], tuple[LayerGroup, LayerGroup]]


def _keep(net: nn.Module, names: tuple[str, ...]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names))


RESNET_EARLY = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")
RESNET_LATE = ("layer3", "layer4")


def _resnet_body(net: nn.Module) -> nn.Module:
    return _keep(net, RESNET_EARLY + RESNET_LATE)


def _resnet_split(body: nn.Module) -> tuple[LayerGroup, LayerGroup]:
    return (
        LayerGroup("body_early", tuple(getattr(body, n) for n in RESNET_EARLY)),
        LayerGroup("body_late", tuple(getattr(body, n) for n in RESNET_LATE)),
    )


def _densenet_body(net: nn.Module) -> nn.Module:
    """``features`` and the ReLU torchvision's forward applies after them."""
    return nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU()))


def _densenet_split(body: nn.Module) -> tuple[LayerGroup, LayerGroup]:
    blocks = tuple(body.features)
    return LayerGroup("body_early", blocks[:7]), LayerGroup("body_late", blocks[7:])


def _features_body(net: nn.Module) -> nn.Module:
    return _keep(net, ("features",))


def _halves_split(body: nn.Module) -> tuple[LayerGroup, LayerGroup]:
    blocks = tuple(body.features)
    half = len(blocks) // 2
    return LayerGroup("body_early", blocks[:half]), LayerGroup("body_late", blocks[half:])


def _regnet_body(net: nn.Module) -> nn.Module:
    return _keep(net, ("stem", "trunk_output"))


def _regnet_split(body: nn.Module) -> tuple[LayerGroup, LayerGroup]:
    trunk = tuple(body.trunk_output)
    return LayerGroup("body_early", (body.stem, *trunk[:2])), LayerGroup("body_late", trunk[2:])


def _vit_body(net: nn.Module) -> nn.Module:
    """The VisionTransformer itself with ``heads`` emptied: its forward gives the class token's vector."""
    net.heads = nn.Identity()
    return net


def _vit_split(body: nn.Module) -> tuple[LayerGroup, LayerGroup]:
    layers = tuple(body.encoder.layers)
    half = len(layers) // 2
    early = LayerGroup("body_early", (body.conv_proj, *layers[:half]), ((body, "class_token"), (body.encoder, "pos_embedding")))
    return early, LayerGroup("body_late", (*layers[half:], body.encoder.ln))


@dataclass(frozen=True)
class Family:
    """How one family of torchvision classifiers is cut and split."""

    name: str
    archs: str  # regular expression on torchvision's model names
    classifier: str  # the attribute holding torchvision's classifier (its first Linear sizes the head)
    body: Callable[[nn.Module], nn.Module]
    split: Split
    feature_map: bool = True  # False: the body gives a vector (no pooling in the head)


FAMILIES = (
    Family("resnet", r"(resnet\d+|resnext\d+_\w+|wide_resnet\d+_2)", "fc", _resnet_body, _resnet_split),
    Family("densenet", r"densenet\d+", "classifier", _densenet_body, _densenet_split),
    Family("efficientnet", r"efficientnet_(b\d|v2_[sml])", "classifier", _features_body, _halves_split),
    Family("mobilenet", r"mobilenet_v(2|3_small|3_large)", "classifier", _features_body, _halves_split),
    Family("regnet", r"regnet_[xy]_\w+", "fc", _regnet_body, _regnet_split),
    Family("convnext", r"convnext_\w+", "classifier", _features_body, _halves_split),
    Family("vit", r"vit_[bhl]_\d+", "heads", _vit_body, _vit_split, feature_map=False),
)


def supported() -> list[str]:
    """Every torchvision classification model name a family here covers."""
    names = torchvision.models.list_models(module=torchvision.models)
    return [n for n in names if any(re.fullmatch(f.archs, n) for f in FAMILIES)]


def family_of(arch: str) -> Family:
    """The family of torchvision model ``arch``; any other name is a config error listing the families."""
    for family in FAMILIES:
        if re.fullmatch(family.archs, arch) and arch in torchvision.models.list_models(module=torchvision.models):
            return family
    allowed = ", ".join(f"{f.name} ({f.archs})" for f in FAMILIES)
    raise ConfigError("model.arch", arch, f"a torchvision classification model of a supported family: {allowed}")


def n_features(net: nn.Module, family: Family) -> int:
    """Channels (or width) the body gives: the input size of the first Linear of torchvision's classifier."""
    classifier = getattr(net, family.classifier)
    return next(m for m in classifier.modules() if isinstance(m, nn.Linear)).in_features


DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def current_keys(state: dict, family: Family) -> dict:
    """A state dict with the parameter names torchvision's modules use today.

    DenseNet's published files still name ``norm.1`` what the module now calls ``norm1``
    (torchvision renames them the same way when it loads them itself).
    """
    if family.name != "densenet":
        return state
    return {DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
