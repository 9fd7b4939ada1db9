"""Where a backbone's starting weights come from: torchvision's published ones, a state dict, or a run's checkpoint.

Everything loads with ``weights_only=True`` (tensors only, no pickled code). Nothing is downloaded:
a published file (``model.weights=imagenet``, or a weights name such as ``IMAGENET1K_V2``) must
already be in torch's hub cache, where torchvision's weights API keeps it, and its absence is one
clear error saying where it is expected.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet34_Weights, WeightsEnum, get_model_weights

from stagetune.errors import DataError
from stagetune.vision.backbones import current_keys, family_of

IMAGENET = ResNet34_Weights.IMAGENET1K_V1


def cache_path(weights: WeightsEnum) -> Path:
    """Where torchvision's weights API keeps a published file: ``<hub dir>/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def imagenet_cache_path() -> Path:
    """Where ResNet34's ImageNet file is expected."""
    return cache_path(IMAGENET)


def published(arch: str, name: str) -> WeightsEnum | None:
    """torchvision's weights ``name`` of ``arch`` (``imagenet``: its default ones); None when ``name`` is not one."""
    options = get_model_weights(arch)
    if name == "imagenet":
        return options.DEFAULT
    return options.__members__.get(name)


def published_state_dict(arch: str, weights: WeightsEnum, source: str) -> dict[str, torch.Tensor]:
    """``arch``'s published ``weights`` from the hub cache; absent, one line saying where the file is expected."""
    path = cache_path(weights)
    if not path.is_file():
        raise DataError(
            f"model.weights={source}: the ImageNet weights are not in the cache, expected {path} ({arch} {weights.name}). "
            f'On a machine with internet run `python -c "import torchvision; '
            f"torchvision.models.get_model('{arch}', weights='{weights.name}')\"` (or download {weights.url}) "
            f"and copy the file there (set TORCH_HOME to move the cache), or use model.weights=null"
        )
    return _read(path)


def _read(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"model.weights={path}: cannot be read as a weights-only torch file ({err})") from None


def body_state_dict(source: str, arch: str = "resnet34") -> dict[str, torch.Tensor]:
    """The body's tensors, named as torchvision's ``arch`` names them (``conv1.weight`` ...).

    ``imagenet`` or a weights name of ``arch``; a ``.pth`` holding a torchvision state dict (its
    classifier dropped) or one of a stagetune model (``body.*`` kept); or a stagetune ``.ckpt``
    (its ``state_dict``'s ``body.*``).
    """
    family = family_of(arch)
    weights = published(arch, source)
    if weights is not None:
        state = published_state_dict(arch, weights, source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            names = ", ".join(["imagenet", *get_model_weights(arch).__members__])
            raise DataError(f"model.weights={source}: no such file (use {names}, a .pth/.ckpt path or null)")
        state = _read(path)
        if isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if any(k.startswith("body.") for k in state):
        return {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
    return current_keys({k: v for k, v in state.items() if not k.startswith(family.classifier + ".")}, family)


def load_body_weights(body: nn.Module, source: str, arch: str = "resnet34") -> None:
    """Load ``source`` into ``body``; a file that does not fit is a clear error, not a partial load."""
    state = body_state_dict(source, arch)
    try:
        missing, unexpected = body.load_state_dict(state, strict=False)
    except RuntimeError as err:
        shapes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise DataError(f"model.weights={source}: does not fit a {arch} body ({'; '.join(shapes[:2]) or err})") from None
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise DataError(f"model.weights={source}: not a {arch} body ({detail})")
