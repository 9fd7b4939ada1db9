"""Layer groups and the optimizer param groups a stage makes of them.

A model is an ordered list of *layer groups* (fastai's split). Everything the pipeline does to a
model by stage — freezing, discriminative learning rates, which tensors get weight decay — is
expressed over those groups, so nothing else needs to know a model's insides. How a learning
rate spreads over them is :mod:`~stagetune.engine.learning_rate`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from stagetune.engine.learning_rate import LearningRate, slice_lrs

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class LayerGroup:
    """An ordered slice of a model: a name and the modules that own its parameters."""

    name: str
    modules: tuple[nn.Module, ...]

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter of the group once, in module order."""
        seen: set[int] = set()
        params: list[nn.Parameter] = []
        for module in self.modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def norm_layers(self) -> list[nn.Module]:
        """The normalisation layers inside the group (kept trainable under ``train_bn``)."""
        return [m for module in self.modules for m in module.modules() if isinstance(m, NORM_TYPES)]


def check_partition(model: nn.Module, groups: Sequence[LayerGroup]) -> None:
    """Fail unless the groups hold every parameter of ``model`` exactly once."""
    owner: dict[int, str] = {}
    for group in groups:
        for p in group.parameters():
            if id(p) in owner:
                raise ValueError(f"a parameter is in both layer groups {owner[id(p)]!r} and {group.name!r}")
            owner[id(p)] = group.name
    missing = [n for n, p in model.named_parameters() if id(p) not in owner]
    if missing:
        raise ValueError(f"parameters in no layer group: {', '.join(missing[:5])}")


def is_no_decay(name: str, module: nn.Module, bn_wd: bool, bias_wd: bool) -> bool:
    """Whether a parameter is exempt from weight decay (normalisation weights, biases)."""
    if isinstance(module, NORM_TYPES):
        return not bn_wd
    return name == "bias" and not bias_wd


def param_groups(
    groups: Sequence[LayerGroup],
    trainable: Sequence[int],
    lr: LearningRate,
    wd: float | Mapping[str, float],
    bn_wd: bool = False,
    bias_wd: bool = False,
) -> list[dict]:
    """Optimizer param groups for a stage, with the LR slice spread over the trainable groups.

    Each trainable layer group gives one param group, split in two when some of its tensors are
    exempt from weight decay (``bn_wd``/``bias_wd`` false). Normalisation layers of frozen groups
    that still train (``train_bn``) form a param group of their own at the first trainable
    group's rate. Every param group carries ``layer_group`` (index) and ``name`` so LRs can be
    logged and checked per layer group. ``wd`` is one number for every group or a mapping from
    layer-group name to its ``wd`` (every group must be in it).
    """
    lrs = dict(zip(trainable, slice_lrs(lr, len(trainable))))
    lowest = lrs[trainable[0]]
    out: list[dict] = []
    for k, group in enumerate(groups):
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        seen: set[int] = set()
        for module in group.modules:
            for sub in module.modules():
                for pname, p in sub.named_parameters(recurse=False):
                    if id(p) in seen or not p.requires_grad:
                        continue
                    seen.add(id(p))
                    (no_decay if is_no_decay(pname, sub, bn_wd, bias_wd) else decay).append(p)
        suffix = "" if k in lrs else "/frozen_bn"
        decay_wd = wd[group.name] if isinstance(wd, Mapping) else wd
        for params, group_wd, kind in ((decay, decay_wd, ""), (no_decay, 0.0, "/no_wd")):
            if params:
                out.append(
                    {
                        "params": params,
                        "lr": lrs.get(k, lowest),
                        "wd": group_wd,
                        "layer_group": k,
                        "name": group.name + suffix + kind,
                    }
                )
    return out


def set_trainable(groups: Sequence[LayerGroup], freeze_to: int, train_bn: bool) -> list[int]:
    """Freeze ``groups[:freeze_to]`` and unfreeze the rest; return the trainable group indices.

    ``freeze_to=-1`` trains the last group only, ``0`` trains all. With ``train_bn`` the
    normalisation layers of frozen groups keep training, as fastai's default.
    """
    n = len(groups)
    start = freeze_to % n if freeze_to < 0 else freeze_to
    trainable = list(range(start, n))
    for k, group in enumerate(groups):
        on = k in trainable
        for p in group.parameters():
            p.requires_grad_(on)
        if not on and train_bn:
            for layer in group.norm_layers():
                for p in layer.parameters(recurse=False):
                    p.requires_grad_(True)
    return trainable


def frozen_norm_layers(groups: Sequence[LayerGroup], trainable: Sequence[int], train_bn: bool) -> list[nn.Module]:
    """Normalisation layers whose running statistics must stay fixed in the current stage."""
    if train_bn:
        return []
    return [m for k, g in enumerate(groups) if k not in trainable for m in g.norm_layers()]
