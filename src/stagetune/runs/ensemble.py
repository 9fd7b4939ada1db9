"""Several trained runs as one model: their predictions averaged on a split they share.

A ratings ensemble predicts the mean of its members' ratings; an image ensemble the mean of their
class probabilities (its loss is the cross-entropy of that mean). Averaging only means something
over the same examples, so the members must be runs of the same data: their data configs (how a
split is batched and the ``y_range`` its ratings are checked against aside) and the evaluated
split's examples are compared, and the first difference
is one line. Each member is scored alone on the same examples with the same formulas, so a record
shows what averaging gained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_accuracy

from stagetune.errors import StagetuneError
from stagetune.runs.evaluation import SPLITS, evaluate
from stagetune.runs.trained import Trained

# How a split is batched, or checked (ratings within the model's y_range), not which examples it holds;
# the examples themselves are compared too.
NOT_SPLIT_KEYS = frozenset({"batch_size", "valid_batch_size", "num_workers", "y_range"})
RATING_BATCH = 65_536


def is_ratings(trained: Trained) -> bool:
    """A ratings run: its data gives the (users, items, ratings) parts and its model rates pairs."""
    return callable(getattr(trained.datamodule, "parts", None))


@dataclass
class EnsembleEvaluation:
    """The ensemble's metrics on ``split`` and each member's alone, under the same keys."""

    split: str
    metrics: dict[str, float]
    members: list[dict[str, float]]


def data_config(trained: Trained) -> dict:
    """The run's resolved ``data:`` config without the keys that leave the splits' examples as they are."""
    data = OmegaConf.to_container(trained.cfg.data, resolve=True)
    return {key: value for key, value in data.items() if key not in NOT_SPLIT_KEYS}


def check_same_data(members: Sequence[Trained]) -> None:
    """One line naming the first ``data.`` key in which a member differs from the first member."""
    if len(members) < 2:
        raise StagetuneError(f"an ensemble needs at least 2 runs, got {len(members)}")
    first, reference = members[0], data_config(members[0])
    for other in members[1:]:
        config = data_config(other)
        for key in sorted(reference.keys() | config.keys()):
            if reference.get(key) != config.get(key):
                raise StagetuneError(
                    f"{other.run.path}: data.{key} is {config.get(key)!r}, not {reference.get(key)!r} as in "
                    f"{first.run.path}; an ensemble averages runs of the same data and splits"
                )


def check_same_examples(members: Sequence[Trained], split: str, examples: Sequence[Sequence[torch.Tensor]]) -> None:
    """The split's examples (tensors per member) are identical: same config, but files may have changed."""
    for other, tensors in zip(members[1:], examples[1:]):
        same = all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(examples[0], tensors))
        if not same:
            raise StagetuneError(
                f"{other.run.path}: its {split} split holds other examples than {members[0].run.path}'s "
                "(the data changed since one was trained); an ensemble averages runs of the same splits"
            )


@torch.no_grad()
def rating_predictions(trained: Trained, part) -> torch.Tensor:
    """The model's predicted rating for every (user, item) of ``part``, in its order."""
    model, device = trained.model.eval(), trained.device
    return torch.cat(
        [
            model(part.users[start : start + RATING_BATCH].to(device), part.items[start : start + RATING_BATCH].to(device)).float().cpu()
            for start in range(0, len(part), RATING_BATCH)
        ]
    )


def rating_metrics(pred: torch.Tensor, ratings: torch.Tensor, prefix: str) -> dict[str, float]:
    """The keys a ratings model logs: ``loss`` (MSE), ``rmse`` and ``mae``."""
    err = pred.double() - ratings.double()
    mse = float(err.pow(2).mean())
    return {f"{prefix}/loss": mse, f"{prefix}/mae": float(err.abs().mean()), f"{prefix}/rmse": mse**0.5}


def class_metrics(probs: torch.Tensor, targets: torch.Tensor, prefix: str) -> dict[str, float]:
    """The keys an image classifier logs, from class probabilities: ``loss`` is their cross-entropy."""
    n_classes = probs.shape[1]
    acc = float(multiclass_accuracy(probs, targets, num_classes=n_classes, average="micro"))
    out = {f"{prefix}/acc": acc, f"{prefix}/error_rate": 1 - acc}
    if n_classes > 5:
        out[f"{prefix}/top5"] = float(multiclass_accuracy(probs, targets, num_classes=n_classes, top_k=5, average="micro"))
    out[f"{prefix}/loss"] = float(F.nll_loss(probs.clamp_min(1e-12).log(), targets))
    return out


def ensemble_ratings(members: Sequence[Trained], split: str) -> EnsembleEvaluation:
    parts = []
    for trained in members:
        if not is_ratings(trained):
            raise StagetuneError(f"{trained.run.path} is not a ratings run; an ensemble averages runs of one kind")
        parts.append(dict(zip(("train", "valid", "test"), trained.datamodule.parts()))[split])
    check_same_examples(members, split, [(p.users, p.items, p.ratings) for p in parts])
    preds = [rating_predictions(trained, part) for trained, part in zip(members, parts)]
    prefix, ratings = SPLITS[split], parts[0].ratings
    return EnsembleEvaluation(split, rating_metrics(torch.stack(preds).mean(0), ratings, prefix), [rating_metrics(p, ratings, prefix) for p in preds])


def ensemble_classifiers(members: Sequence[Trained], split: str) -> EnsembleEvaluation:
    results = [evaluate(trained, split) for trained in members]
    if not all(result.is_classifier for result in results):
        raise StagetuneError(f"{members[0].run.path}: only ratings and image-classifier runs can be averaged")
    check_same_examples(members, split, [(result.targets,) for result in results])
    probs = [result.logits.softmax(1) for result in results]
    prefix, targets = SPLITS[split], results[0].targets
    return EnsembleEvaluation(split, class_metrics(torch.stack(probs).mean(0), targets, prefix), [class_metrics(p, targets, prefix) for p in probs])


def evaluate_ensemble(members: Sequence[Trained], split: str = "valid") -> EnsembleEvaluation:
    """The averaged predictions of ``members`` scored on ``split``, beside each member alone."""
    if split not in SPLITS:
        raise StagetuneError(f"--split {split}: use {' or '.join(SPLITS)}")
    check_same_data(members)
    if split == "test" and not getattr(members[0].datamodule, "has_test", False):
        raise StagetuneError(f"{members[0].run.path}: its data has no test split; use --split valid")
    if is_ratings(members[0]):
        return ensemble_ratings(members, split)
    return ensemble_classifiers(members, split)
