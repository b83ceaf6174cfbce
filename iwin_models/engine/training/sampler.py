"""Reproducible data order and augmentation: :class:`InfiniteSampler` (an endless, resumable stream of
``(index, sample_seed)``), :class:`SeededDataset` (each sample drawn with every global generator seeded) and
:func:`build_loader`, the two in a DataLoader."""
from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["InfiniteSampler", "SeededDataset", "seeded_rng", "worker_init", "build_loader"]


def _sample_seed(seed: int, rank: int, n: int) -> int:
    return int(np.random.SeedSequence([seed, rank, n]).generate_state(1, dtype=np.uint32)[0])


class InfiniteSampler(torch.utils.data.Sampler):
    """An endless stream of ``(index, sample_seed)`` for this process.

    Epoch ``e`` is ``torch.randperm`` from a generator seeded with ``seed + e``, padded to a multiple
    of ``world_size`` and dealt out ``rank::world_size`` (as ``DistributedSampler``). ``start`` is the
    number of samples this process already consumed (``iteration * batch_size`` on resume), so the
    stream restarts exactly where it was, whatever the loader had prefetched.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 start: int = 0):
        if size < 1:
            raise ValueError("the training data set is empty")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.shuffle, self.start = shuffle, start
        self.per_rank = math.ceil(size / world_size)

    def position(self, consumed: int) -> dict:
        """Where the stream stands after ``consumed`` samples: ``epoch`` and ``position`` in it."""
        epoch, position = divmod(consumed, self.per_rank)
        return dict(seed=self.seed, epoch=epoch, position=position, consumed=consumed)

    def epoch_order(self, epoch: int) -> list[int]:
        """This process's indices for ``epoch``."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.size))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, position = divmod(self.start, self.per_rank)
        while True:
            order = self.epoch_order(epoch)
            for p in range(position, self.per_rank):
                yield order[p], _sample_seed(self.seed, self.rank, epoch * self.per_rank + p)
            epoch, position = epoch + 1, 0


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Seed python, numpy and torch (CPU) with ``seed`` inside, and put their states back after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # CPU only: the GPU generators drive dropout, not data
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededDataset(torch.utils.data.Dataset):
    """Reads ``(index, seed)`` from :class:`InfiniteSampler` and runs the dataset (and its random
    augmentation, whichever generator it uses) with every global generator seeded by ``seed``: the
    samples do not depend on the worker that loads them, nor on anything before them."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with seeded_rng(seed):
            return self.dataset[index]


def worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # the samples are seeded one by one (SeededDataset); only keep workers lean


def build_loader(train_set, batch_size: int, seed: int, rank: int, world_size: int, *, start: int = 0,
                 workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """An endless loader of this process's batches of ``train_set`` (its :class:`InfiniteSampler` is the loader's
    ``sampler``), ``start`` samples in; it draws nothing from the global generators."""
    sampler = InfiniteSampler(len(train_set), seed, rank, world_size, start=start)
    return torch.utils.data.DataLoader(
        SeededDataset(train_set), batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=pin_memory, drop_last=True, worker_init_fn=worker_init, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))  # the loader must not draw from the global RNG
