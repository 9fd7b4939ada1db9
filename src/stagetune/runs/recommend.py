"""Items ranked by a trained ratings run: the top unseen items for a user, the nearest items to an item."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from stagetune.collab.data import UNKNOWN, RatingsDataModule
from stagetune.errors import StagetuneError
from stagetune.runs.trained import Trained


@dataclass
class Ranked:
    item: int | str
    title: str
    score: float


def ratings_data(trained: Trained) -> RatingsDataModule:
    data = trained.datamodule
    if not isinstance(data, RatingsDataModule):
        raise StagetuneError(f"{trained.run.path} is a {trained.cfg.get('experiment', '?')} run, not a rating model (stagetune-predict uses image runs)")
    return data


def _ranked(data: RatingsDataModule, indices: torch.Tensor, scores: torch.Tensor) -> list[Ranked]:
    titles = data.item_titles
    return [Ranked(data.item_ids[i - 1].item(), titles[i] if titles else "", float(s)) for i, s in zip(indices.tolist(), scores.tolist())]


@torch.no_grad()
def recommend(trained: Trained, user: int | str, k: int = 10) -> list[Ranked]:
    """The ``k`` items with the highest predicted rating that ``user`` has not rated."""
    data = ratings_data(trained)
    u = data.trained_index("user", user)
    candidates = torch.ones(data.n_items + 1, dtype=torch.bool)
    candidates[UNKNOWN] = False
    candidates[torch.as_tensor(data.item_counts() == 0)] = False
    for split in data.parts():
        candidates[split.items[split.users == u]] = False
    items = candidates.nonzero().squeeze(1)
    users = torch.full_like(items, u)
    predicted = trained.model(users.to(trained.device), items.to(trained.device)).cpu()
    scores, order = predicted.topk(min(k, len(items)))
    return _ranked(data, items[order], scores)


@torch.no_grad()
def similar(trained: Trained, item: int | str, k: int = 10) -> list[Ranked]:
    """The ``k`` items whose learned vectors (factors plus side embeddings) point the most the same way as ``item``'s."""
    data = ratings_data(trained)
    i = data.trained_index("item", item)
    factors = trained.model.all_item_vectors().cpu()
    cosine = F.cosine_similarity(factors, factors[i].unsqueeze(0), dim=1)
    seen = torch.as_tensor(data.item_counts() > 0)
    seen[i] = False
    items = seen.nonzero().squeeze(1)
    scores, order = cosine[items].topk(min(k, len(items)))
    return _ranked(data, items[order], scores)
