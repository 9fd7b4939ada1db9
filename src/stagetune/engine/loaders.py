"""Data loaders whose order is a function of (seed, epoch) alone, sharded over DDP ranks.

Every datamodule builds its loaders here. The order of an epoch never depends on how many random
numbers were drawn before it, so a resumed run sees exactly the batches the uninterrupted run saw,
and each rank of a DDP run takes its own shard (Lightning's own sampler injection is off:
``use_distributed_sampler: false``). Nothing here draws from the global generators, which
:mod:`stagetune.engine.reproducibility` carries through checkpoints for dropout and augmentation.

A training loader's sampler (:class:`EpochSampler`) can also start its epoch part-way: a
checkpoint written mid-epoch records how many batches training took, and the resumed loader skips
them (:class:`~stagetune.engine.reproducibility.ExactResume` does both).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def run_seed() -> int:
    """The run's seed (``seed`` in the config), as Lightning's ``seed_everything`` recorded it."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


def shard() -> tuple[int, int]:
    """(world size, rank) of this process; (1, 0) outside a distributed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class WholeBatches(Dataset):
    """A dataset that answers a whole batch's list of indices in one call (one tensor gather per batch).

    The loader stays an ordinary batched DataLoader over a per-epoch sampler: torch hands each
    batch's indices to ``__getitems__``, and anything that rebuilds the loader with another
    sampler (Lightning's ``overfit_batches`` swaps in a sequential one) keeps whole batches.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def __getitems__(self, indices: list[int]):
        return self.dataset[indices]


def as_batch(batch):
    """The collate function of :class:`WholeBatches` loaders: the batch is already one."""
    return batch


class EpochSampler(DistributedSampler):
    """This rank's indices of one epoch; a resumed one leaves out those of the batches already trained on."""

    _resume: tuple[int, int] | None = None  # (epoch, indices to leave out of that epoch's pass)

    def resume_at(self, epoch: int, skip: int) -> None:
        """Leave out the first ``skip`` indices of ``epoch``'s pass, whenever it starts (Lightning sets the epoch late)."""
        self._resume = (epoch, skip)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] <= self.epoch:
            epoch, skip = self._resume
            self._resume = None
            if epoch == self.epoch:
                indices = indices[skip:]
        return iter(indices)


MAX_WORKERS = 8


def default_workers(decodes: bool) -> int:
    """Loader processes when ``data.num_workers`` is null, chosen from this machine.

    Data that is decoded or augmented per example gets one worker per core the training process
    leaves free (at least one, at most :data:`MAX_WORKERS`); data already in memory as tensors gets
    none, since workers would only add copying between processes.
    """
    if not decodes:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores - 1))


def epoch_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool = False,
    whole_batches: bool = False,
    seed: int | None = None,
    **loader_kwargs,
) -> DataLoader:
    """A DataLoader over this rank's :class:`EpochSampler` shard, shuffled by ``(seed, epoch)`` when ``shuffle``.

    ``whole_batches`` hands the dataset a list of indices per batch (for tensor-backed datasets
    that slice a whole batch at once) instead of one index per row.
    """
    seed = run_seed() if seed is None else seed
    world, rank = shard()
    sampler = EpochSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed)
    if whole_batches:
        dataset, loader_kwargs = WholeBatches(dataset), {"collate_fn": as_batch, **loader_kwargs}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, generator=generator, **loader_kwargs)


class EvalShard(Sampler[int]):
    """Rank ``rank``'s share of an evaluation split: indices ``rank, rank + world, ...``, no padding.

    ``DistributedSampler`` pads a split to a multiple of the world size by repeating examples, so
    a metric over 179 images on 2 ranks would count one of them twice. Evaluation needs no equal
    shards (nothing is all-reduced per batch), so each example goes to exactly one rank and the
    metrics, reduced as sums over the ranks, equal one process's.
    """

    def __init__(self, n: int, world: int, rank: int) -> None:
        self.n, self.world, self.rank = n, world, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def eval_loader(dataset: Dataset, batch_size: int, *, whole_batches: bool = False, **loader_kwargs) -> DataLoader:
    """A DataLoader over this rank's :class:`EvalShard` of a validation or test split, in order.

    ``whole_batches`` as for :func:`epoch_loader`.
    """
    world, rank = shard()
    sampler = EvalShard(len(dataset), world, rank)
    if whole_batches:
        dataset, loader_kwargs = WholeBatches(dataset), {"collate_fn": as_batch, **loader_kwargs}
    # its own generator: the seed a loader draws as it starts a pass must not move the global RNG that
    # dropout uses, or a validation redone after a resume would shift every later dropout mask
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator(), **loader_kwargs)
