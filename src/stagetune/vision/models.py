"""ResNet34 with a fresh head, split into fastai's three layer groups.

The body is torchvision's ``resnet34`` without ``avgpool`` and ``fc``; its modules keep
torchvision's names, so an ImageNet state dict loads into it as is. The head is new and sized to
the data's classes: a single linear layer, or fastai's head (concat of max and average pooling,
BatchNorm, dropout, linear, ReLU, BatchNorm, dropout, linear).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torchmetrics
import torchvision
from torch import nn

from stagetune.errors import ConfigError
from stagetune.engine.groups import LayerGroup
from stagetune.engine.plan import StagedModule
from stagetune.vision.report import StageReport
from stagetune.vision.weights import load_body_weights

HEADS = ("linear", "fastai")
BODY_CHANNELS = 512
EARLY = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")
LATE = ("layer3", "layer4")


class AdaptiveConcatPool2d(nn.Module):
    """Max and average pooling side by side: the head sees both the peak and the mean activation."""

    def __init__(self, size: int = 1) -> None:
        super().__init__()
        self.max = nn.AdaptiveMaxPool2d(size)
        self.avg = nn.AdaptiveAvgPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(x), self.avg(x)], 1)


def resnet34_body() -> nn.Sequential:
    """torchvision's resnet34 without ``avgpool`` and ``fc``, module names unchanged."""
    net = torchvision.models.resnet34(weights=None)
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in EARLY + LATE))


def make_head(kind: str, n_classes: int, n_features: int = BODY_CHANNELS) -> nn.Sequential:
    """A freshly initialised head with ``n_classes`` outputs."""
    if kind == "linear":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_features, n_classes))
    if kind == "fastai":
        head = nn.Sequential(
            AdaptiveConcatPool2d(),
            nn.Flatten(),
            nn.BatchNorm1d(2 * n_features),
            nn.Dropout(0.25),
            nn.Linear(2 * n_features, 512, bias=False),
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


class ResNet34Classifier(StagedModule):
    """ResNet34 image classifier: cross-entropy loss; accuracy, error rate and top-5 metrics.

    ``weights``: ``imagenet``, a ``.pth`` state dict, a stagetune ``.ckpt`` (its body only) or
    ``None`` for random weights. The head is always new. ``channels_last`` stores convolution
    weights and inputs NHWC (faster convolutions on GPUs with tensor cores); ``compile`` runs body
    and head through ``torch.compile``. The model opts into feature caching
    (:mod:`stagetune.engine.cache`) through :meth:`features` and :meth:`forward_from`.
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
        super().__init__()
        if n_classes < 2:
            raise ConfigError("data.classes", n_classes, "a classifier needs at least 2 classes")
        self.save_hyperparameters(ignore=["class_names"])
        self.class_names = [str(c) for c in class_names] if class_names else [str(k) for k in range(n_classes)]
        self.body = resnet34_body()
        if weights is not None:
            load_body_weights(self.body, str(weights))
        self.head = make_head(head, n_classes)
        self.loss = nn.CrossEntropyLoss()
        self.metrics = nn.ModuleDict({split: self._split_metrics(n_classes) for split in ("val", "test")})
        self.losses = nn.ModuleDict({split: torchmetrics.MeanMetric() for split in ("val", "test")})
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.body.compile()
            self.head.compile()
        self.input_group = 0  # training batches hold the outputs of groups[:input_group] (feature cache)

    @staticmethod
    def _split_metrics(n_classes: int) -> torchmetrics.MetricCollection:
        """Accuracy and top-5 of a split: torchmetrics keeps counts, summed over DDP ranks at ``compute``."""
        metrics = {"acc": torchmetrics.Accuracy(task="multiclass", num_classes=n_classes)}
        if n_classes > 5:
            metrics["top5"] = torchmetrics.Accuracy(task="multiclass", num_classes=n_classes, top_k=5)
        return torchmetrics.MetricCollection(metrics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)

    def _group_modules(self) -> list[nn.Module]:
        """One callable per layer group, in order (slices of the body share its modules)."""
        return [self.body[: len(EARLY)], self.body[len(EARLY) :], self.head]

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

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def layer_groups(self) -> list[LayerGroup]:
        """``[conv1 .. layer2]``, ``[layer3, layer4]``, ``[head]``: fastai's resnet split."""
        return [
            LayerGroup("body_early", tuple(getattr(self.body, n) for n in EARLY)),
            LayerGroup("body_late", tuple(getattr(self.body, n) for n in LATE)),
            LayerGroup("head", (self.head,)),
        ]

    def configure_callbacks(self) -> list[pl.Callback]:
        """The confusion matrix and worst predictions in TensorBoard at the end of each stage."""
        return [StageReport()]

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self.forward_from(x, self.input_group), y)
        return loss

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
