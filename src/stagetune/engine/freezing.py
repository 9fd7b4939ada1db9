"""What a stage freezes: ``requires_grad`` per layer group, and frozen normalisation layers kept in eval.

With ``train_bn`` (fastai's default) the normalisation layers of frozen groups keep training;
without it their running statistics must not move, so they are put back in eval mode before
every batch (Lightning sets the whole module to train mode at each epoch's start).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from stagetune.engine.groups import LayerGroup, frozen_norm_layers, set_trainable


class Freezing:
    """Applies one stage's ``freeze_to``/``train_bn`` to the layer groups and keeps it applied."""

    def __init__(self) -> None:
        self.frozen_norms: list[nn.Module] = []

    def apply(self, groups: Sequence[LayerGroup], freeze_to: int, train_bn: bool) -> list[int]:
        """Set ``requires_grad`` and the norm layers' modes; return the trainable group indices."""
        trainable = set_trainable(groups, freeze_to, train_bn)
        self.frozen_norms = frozen_norm_layers(groups, trainable, train_bn)
        frozen = {id(m) for m in self.frozen_norms}
        for group in groups:
            for layer in group.norm_layers():
                if id(layer) not in frozen:
                    layer.train()
        return trainable

    def hold(self) -> None:
        """Frozen normalisation layers back in eval mode (call before each training batch)."""
        for layer in self.frozen_norms:
            layer.eval()
