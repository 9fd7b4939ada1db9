"""Image classifiers: a torchvision backbone cut before its classifier, a fresh head, three layer groups.

The body is a torchvision classification model without its pooling and classifier, its modules
keeping torchvision's names so a published state dict loads into it as is; the families and
their early/late split are in :mod:`stagetune.vision.backbones`. The head is new and sized to
the data's classes: a single linear layer, or fastai's head (concat of max and average pooling,
BatchNorm, dropout, linear, ReLU, BatchNorm, dropout, linear). ``model=resnet34`` is the ResNet34
of this kind that also opts into the feature cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
import torchvision
from torch import nn

from stagetune.engine.groups import LayerGroup
from stagetune.engine.plan import StagedModule
from stagetune.errors import ConfigError
from stagetune.vision.backbones import RESNET_EARLY, family_of, n_features
from stagetune.vision.report import StageReport
from stagetune.vision.weights import load_body_weights

HEADS = ("linear", "fastai")


class AdaptiveConcatPool2d(nn.Module):
    """Max and average pooling side by side: the head sees both the peak and the mean activation."""

    def __init__(self, size: int = 1) -> None:
        super().__init__()
        self.max = nn.AdaptiveMaxPool2d(size)
        self.avg = nn.AdaptiveAvgPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(x), self.avg(x)], 1)


def make_head(kind: str, n_classes: int, n_features: int = 512, feature_map: bool = True) -> nn.Sequential:
    """A freshly initialised head with ``n_classes`` outputs, pooling a feature map first (not a vector: vit)."""
    if kind == "linear":
        pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if feature_map else []
        return nn.Sequential(*pool, nn.Linear(n_features, n_classes))
    if kind == "fastai":
        width = 2 * n_features if feature_map else n_features
        pool = [AdaptiveConcatPool2d(), nn.Flatten()] if feature_map else []
        head = nn.Sequential(
            *pool,
            nn.BatchNorm1d(width),
            nn.Dropout(0.25),
            nn.Linear(width, 512, bias=False),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(512),
            nn.Dropout(0.5),
            nn.Linear(512, n_classes, bias=False),
        )
        for layer in head:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight)
        return head
    raise ConfigError("model.head", kind, "allowed: " + ", ".join(HEADS))


class TorchvisionClassifier(StagedModule):
    """Any torchvision classification backbone of a known family: cross-entropy loss; accuracy, error rate and top-5.

    ``arch``: torchvision's model name (``resnet50``, ``convnext_tiny``, ``vit_b_16`` ...).
    ``weights``: ``imagenet`` (torchvision's default weights of ``arch``) or another weights name
    of it (``IMAGENET1K_V2``), read from torch's hub cache; a ``.pth`` state dict; a stagetune
    ``.ckpt`` (its body only); or ``None`` for random weights. The head is always new.
    ``arch_kwargs`` go to torchvision's constructor (vit: ``image_size``, which must be the data's
    ``size``). ``channels_last`` stores convolution weights and inputs NHWC (faster convolutions on
    GPUs with tensor cores); ``compile`` runs body and head through ``torch.compile``.
    """

    def __init__(
        self,
        arch: str,
        n_classes: int,
        head: str = "fastai",
        weights: str | None = "imagenet",
        class_names: Sequence[str] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        arch_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ConfigError("data.classes", n_classes, "a classifier needs at least 2 classes")
        self.save_hyperparameters(ignore=["class_names"])
        self.family = family_of(arch)
        self.class_names = [str(c) for c in class_names] if class_names else [str(k) for k in range(n_classes)]
        try:
            net = torchvision.models.get_model(arch, weights=None, **(arch_kwargs or {}))
        except (TypeError, ValueError) as err:
            raise ConfigError("model.arch_kwargs", arch_kwargs, f"not accepted by torchvision's {arch} ({err})") from None
        width = n_features(net, self.family)
        self.body = self.family.body(net)
        if weights is not None:
            load_body_weights(self.body, str(weights), arch)
        self.head = make_head(head, n_classes, width, self.family.feature_map)
        self.loss = nn.CrossEntropyLoss()
        self.metrics = nn.ModuleDict({split: self._split_metrics(n_classes) for split in ("val", "test")})
        self.losses = nn.ModuleDict({split: torchmetrics.MeanMetric() for split in ("val", "test")})
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.body.compile()
            self.head.compile()

    @staticmethod
    def _split_metrics(n_classes: int) -> torchmetrics.MetricCollection:
        """Accuracy and top-5 of a split: torchmetrics keeps counts, summed over DDP ranks at ``compute``."""
        metrics = {"acc": torchmetrics.Accuracy(task="multiclass", num_classes=n_classes)}
        if n_classes > 5:
            metrics["top5"] = torchmetrics.Accuracy(task="multiclass", num_classes=n_classes, top_k=5)
        return torchmetrics.MetricCollection(metrics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self._layout(x)))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def layer_groups(self) -> list[LayerGroup]:
        """``[body_early, body_late, head]`` by the family's rule (:mod:`stagetune.vision.backbones`).

        Read from the modules at each call: ``sync_batchnorm`` swaps norm layers after the model is built.
        """
        early, late = self.family.split(self.body)
        return [early, late, LayerGroup("head", (self.head,))]

    def configure_callbacks(self) -> list[pl.Callback]:
        """The confusion matrix and worst predictions in TensorBoard at the end of each stage."""
        return [StageReport()]

    def setup(self, stage: str) -> None:
        """A vit takes images of exactly its ``image_size``: a different ``data.size`` stops the run before it starts."""
        size = getattr(getattr(self.trainer, "datamodule", None), "size", None)
        expected = getattr(self.body, "image_size", None)
        if not self.family.feature_map and size is not None and size != expected:
            raise ConfigError(
                "model.arch_kwargs.image_size", expected, f"{self.hparams.arch} takes images of its image_size and data.size is {size}: set the two equal"
            )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss(self(x), y)

    def _evaluate(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.metrics[split].update(logits, y)
        self.losses[split].update(self.loss(logits, y), len(y))
        return logits

    def _log_metrics(self, split: str) -> None:
        """The split's metrics over every example once: sums and counts reduced over the DDP ranks."""
        values = self.metrics[split].compute()
        loss = self.losses[split].compute()
        self.metrics[split].reset()
        self.losses[split].reset()
        out = {f"{split}/{name}": value for name, value in values.items()}
        out[f"{split}/error_rate"] = 1 - values["acc"]
        out[f"{split}/loss"] = loss
        self.log_dict(out, prog_bar=split == "val", sync_dist=True)

    def validation_step(self, batch, batch_idx):
        return self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch, batch_idx):
        return self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")


class ResNet34Classifier(TorchvisionClassifier):
    """ResNet34 (``model=resnet34``), which also opts into feature caching (:mod:`stagetune.engine.cache`).

    Its groups are fastai's resnet split, ``[conv1 .. layer2]``, ``[layer3, layer4]``, ``[head]``;
    :meth:`features` and :meth:`forward_from` run them one after another.
    """

    def __init__(
        self,
        n_classes: int,
        head: str = "fastai",
        weights: str | None = "imagenet",
        class_names: Sequence[str] | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__("resnet34", n_classes, head, weights, class_names, channels_last, compile)
        self.input_group = 0  # training batches hold the outputs of groups[:input_group] (feature cache)

    def _group_modules(self) -> list[nn.Module]:
        """One callable per layer group, in order (slices of the body share its modules)."""
        return [self.body[: len(RESNET_EARLY)], self.body[len(RESNET_EARLY) :], self.head]

    def features(self, x: torch.Tensor, upto_group: int) -> torch.Tensor:
        """The output of layer groups ``[0, upto_group)`` for images ``x``."""
        x = self._layout(x)
        for module in self._group_modules()[:upto_group]:
            x = module(x)
        return x

    def forward_from(self, x: torch.Tensor, group_index: int) -> torch.Tensor:
        """Logits from ``x``, the output of groups ``[0, group_index)`` (images when 0)."""
        if group_index == 0:
            return self.head(self.body(self._layout(x)))
        for module in self._group_modules()[group_index:]:
            x = module(x)
        return x

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss(self.forward_from(x, self.input_group), y)
