"""Where a ResNet34 body's starting weights come from: ImageNet, a state dict, or a run's checkpoint.

Everything loads with ``weights_only=True`` (tensors only, no pickled code). Nothing is downloaded:
the ImageNet file must already be in torch's hub cache, and its absence is one clear error.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet34_Weights

from stagetune.errors import DataError

IMAGENET = ResNet34_Weights.IMAGENET1K_V1


def imagenet_cache_path() -> Path:
    """Where torchvision's weights API keeps the ImageNet file: ``<hub dir>/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(IMAGENET.url)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """ResNet34's ImageNet weights from the hub cache, through torchvision's weights API."""
    path = imagenet_cache_path()
    if not path.is_file():
        raise DataError(
            f"model.weights=imagenet: the ImageNet weights are not in the cache, expected {path}. "
            f"On a machine with internet run `python -c \"import torchvision; "
            f"torchvision.models.resnet34(weights='IMAGENET1K_V1')\"` (or download {IMAGENET.url}) "
            f"and copy the file there (set TORCH_HOME to move the cache), or use model.weights=null"
        )
    return IMAGENET.get_state_dict(map_location="cpu", progress=False, check_hash=False, weights_only=True)


def _read(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise DataError(f"model.weights={path}: cannot be read as a weights-only torch file ({err})") from None


def body_state_dict(source: str) -> dict[str, torch.Tensor]:
    """The body's tensors, named as torchvision's resnet34 names them (``conv1.weight`` ...).

    ``imagenet``; a ``.pth`` holding a torchvision state dict (its ``fc`` dropped) or one of this
    model (``body.*`` kept); or a stagetune ``.ckpt`` (its ``state_dict``'s ``body.*``).
    """
    if source == "imagenet":
        state = imagenet_state_dict()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"model.weights={source}: no such file (use imagenet, a .pth/.ckpt path or null)")
        state = _read(path)
        if isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if any(k.startswith("body.") for k in state):
        return {k.removeprefix("body."): v for k, v in state.items() if k.startswith("body.")}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_body_weights(body: nn.Module, source: str) -> None:
    """Load ``source`` into ``body``; a file that does not fit is a clear error, not a partial load."""
    state = body_state_dict(source)
    missing, unexpected = body.load_state_dict(state, strict=False)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise DataError(f"model.weights={source}: not a ResNet34 body ({detail})")
