"""Layer groups and the optimizer param groups a stage makes of them.

A model is an ordered list of *layer groups* (fastai's split). Everything the pipeline does to a
model by stage — freezing, discriminative learning rates, which tensors get weight decay — is
expressed over those groups, so nothing else needs to know a model's insides. How a learning
rate spreads over them is :mod:`~stagetune.engine.learning_rate`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from stagetune.engine.learning_rate import LearningRate, slice_lrs
from stagetune.errors import ConfigError

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class LayerGroup:
    """An ordered slice of a model: a name, the modules it holds whole, and single tensors of others.

    ``tensors`` are ``(owning module, parameter name in it)`` pairs: a group made by name patterns
    (:func:`groups_by_pattern`) may hold some of a module's own parameters but not its children's
    (ViT's ``class_token`` sits on the model itself).
    """

    name: str
    modules: tuple[nn.Module, ...]
    tensors: tuple[tuple[nn.Module, str], ...] = ()

    def members(self) -> Iterator[tuple[nn.Module, str, nn.Parameter]]:
        """``(owning module, name in it, parameter)`` for every parameter of the group once, in module order."""
        seen: set[int] = set()
        owned = ((sub, name, p) for module in self.modules for sub in module.modules() for name, p in sub.named_parameters(recurse=False))
        single = ((owner, name, owner.get_parameter(name)) for owner, name in self.tensors)
        for owner, name, p in (*owned, *single):
            if id(p) not in seen:
                seen.add(id(p))
                yield owner, name, p

    def parameters(self) -> list[nn.Parameter]:
        """Every parameter of the group once, in module order."""
        return [p for _, _, p in self.members()]

    def norm_layers(self) -> list[nn.Module]:
        """The normalisation layers inside the group (kept trainable under ``train_bn``)."""
        inside = [m for module in self.modules for m in module.modules() if isinstance(m, NORM_TYPES)]
        owners = [owner for owner, _ in self.tensors if isinstance(owner, NORM_TYPES)]
        return list({id(m): m for m in inside + owners}.values())


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


def groups_by_pattern(model: nn.Module, patterns: Mapping[str, str], key: str = "model.groups") -> list[LayerGroup]:
    """Layer groups of any model from regular expressions on its parameter names, in order.

    ``{"body_early": "conv1|bn1|layer1|layer2", "body_late": "layer3|layer4", "head": "fc"}``: a
    pattern matches a name of ``model.named_parameters()`` from its start up to a dot or the end
    (``layer1`` matches ``layer1.0.conv1.weight``, not ``layer10.weight``; ``re.match`` of
    ``(?:PATTERN)(\\.|$)``). Every parameter must match exactly one pattern and every pattern at
    least one parameter, else a :class:`~stagetune.errors.ConfigError` at ``key`` names the first
    few offenders and the patterns. Each group holds whole the largest modules all of whose
    parameters it owns (so its normalisation layers are found for ``train_bn``) and single tensors
    of the rest. Plain Lightning: ``def layer_groups(self): return groups_by_pattern(self, PATTERNS)``.
    """
    if not isinstance(patterns, Mapping) or not patterns:
        raise ConfigError(key, patterns, "give one or more layer groups as NAME: REGEX on parameter names")
    compiled: dict[str, re.Pattern] = {}
    for name, pattern in patterns.items():
        try:
            compiled[name] = re.compile(rf"(?:{pattern})(?:\.|$)")
        except re.error as err:
            raise ConfigError(f"{key}.{name}", pattern, f"not a regular expression ({err})") from None
    owner: dict[int, int] = {}
    unmatched: list[str] = []
    doubly: list[str] = []
    for pname, p in model.named_parameters():
        hits = [k for k, regex in enumerate(compiled.values()) if regex.match(pname)]
        if not hits:
            unmatched.append(pname)
        elif len(hits) > 1:
            doubly.append(pname)
        else:
            owner[id(p)] = hits[0]
    for what, names in (("match no pattern", unmatched), ("match several patterns", doubly)):
        if names:
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            raise ConfigError(key, dict(patterns), f"{len(names)} parameter(s) {what}: {', '.join(names[:5])}{more}; each must match exactly one")
    used = set(owner.values())
    empty = [n for k, n in enumerate(compiled) if k not in used]
    if empty:
        first = next(iter(dict(model.named_parameters())), "none")
        raise ConfigError(f"{key}.{empty[0]}", patterns[empty[0]], f"matches no parameter name (the names look like {first!r})")
    modules: list[list[nn.Module]] = [[] for _ in compiled]
    tensors: list[list[tuple[nn.Module, str]]] = [[] for _ in compiled]

    def cover(module: nn.Module) -> None:
        found = {owner[id(p)] for p in module.parameters()}
        if not found:
            return
        if len(found) == 1:
            modules[found.pop()].append(module)
            return
        for pname, p in module.named_parameters(recurse=False):
            tensors[owner[id(p)]].append((module, pname))
        for child in module.children():
            cover(child)

    cover(model)
    return [LayerGroup(name, tuple(modules[k]), tuple(tensors[k])) for k, name in enumerate(compiled)]


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
        for owner, pname, p in group.members():
            if p.requires_grad:
                (no_decay if is_no_decay(pname, owner, bn_wd, bias_wd) else decay).append(p)
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
