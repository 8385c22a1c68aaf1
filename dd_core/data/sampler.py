"""Iteration-based batch samplers: endless, deterministic and resumable at any step."""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class GroupedBatchSampler(Sampler[list[int]]):
    """Endless batches of images with similar aspect ratio (wide with wide, tall with tall).

    Batching like images wastes less padding, as torchvision's reference ``GroupedBatchSampler``
    does. Each pass over the data is a fresh permutation drawn from ``(seed, epoch)``, so the
    sequence of batches is a pure function of ``seed``: resuming at step ``n`` is
    ``start_batch=n``, and it yields exactly the batches an uninterrupted run would have.
    """

    def __init__(self, aspect_ratios: Sequence[float], batch_size: int, seed: int = 0, start_batch: int = 0):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not len(aspect_ratios):
            raise ValueError("cannot sample batches from an empty data set")
        self.groups = np.asarray([1 if r >= 1.0 else 0 for r in aspect_ratios])
        self.batch_size = batch_size
        self.seed = seed
        self.start_batch = start_batch

    def _all_batches(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {0: [], 1: []}
        for epoch in itertools.count():
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))
            for index in order:
                bucket = buckets[int(self.groups[index])]
                bucket.append(int(index))
                if len(bucket) == self.batch_size:
                    yield list(bucket)
                    bucket.clear()

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(self._all_batches(), self.start_batch, None)


class MixedBatchSampler(Sampler[list[int]]):
    """Endless minibatches that mix labeled and pseudo-labeled images at a fixed expected ratio.

    The paper (section 4, "Retraining") samples each minibatch "such that the expected ratio of
    original images to generated labeled images is 6:4": every slot of a batch is labeled with
    probability ``labeled_ratio``. Indices address ``ConcatDataset([labeled, pseudo])``: labeled
    images are ``0..num_labeled-1`` and pseudo-labeled ones follow. Each pool is walked in fresh
    permutations; like :class:`GroupedBatchSampler` the sequence is a pure function of ``seed``.
    """

    def __init__(self, num_labeled: int, num_pseudo: int, batch_size: int, labeled_ratio: float = 0.6,
                 seed: int = 0, start_batch: int = 0):
        if num_labeled <= 0:
            raise ValueError("the labeled set is empty: a student needs ground truth in every minibatch")
        if not 0.0 < labeled_ratio <= 1.0:
            raise ValueError(f"labeled_ratio must be in (0, 1], got {labeled_ratio}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_labeled, self.num_pseudo = num_labeled, num_pseudo
        self.batch_size, self.labeled_ratio = batch_size, labeled_ratio if num_pseudo else 1.0
        self.seed, self.start_batch = seed, start_batch

    @staticmethod
    def _pool(size: int, offset: int, seed: int, tag: int) -> Iterator[int]:
        for epoch in itertools.count():
            for i in np.random.default_rng([seed, tag, epoch]).permutation(size):
                yield offset + int(i)

    def _all_batches(self) -> Iterator[list[int]]:
        labeled = self._pool(self.num_labeled, 0, self.seed, 0)
        pseudo = self._pool(self.num_pseudo, self.num_labeled, self.seed, 1) if self.num_pseudo else labeled
        coins = np.random.default_rng([self.seed, 2])
        while True:
            take_labeled = coins.random(self.batch_size) < self.labeled_ratio
            yield [next(labeled) if t else next(pseudo) for t in take_labeled]

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(self._all_batches(), self.start_batch, None)


class RankBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s slice of every global batch, when ``world_size`` processes train together.

    Each step's global minibatch of ``batch_size`` images is drawn exactly as one process would
    draw it (for :class:`MixedBatchSampler` the labeled/pseudo-labeled coin of every slot is flipped
    once, globally), and rank ``r`` takes slots ``r * n .. (r + 1) * n - 1`` with
    ``n = batch_size / world_size``. Concatenating the ranks' slices gives the single-process batch,
    so every rank sees the configured labeled ratio in expectation, and the sequence stays a pure
    function of the seed and the step whatever the number of ranks: a run resumes exactly on any.
    """

    def __init__(self, global_batches: Iterable[list[int]], batch_size: int, rank: int, world_size: int):
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size): got rank {rank} of world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"the global batch of {batch_size} images cannot be split evenly over {world_size} "
                             f"ranks: make batch_size a multiple of the number of processes")
        self.global_batches, self.batch_size = global_batches, batch_size
        self.rank, self.world_size = rank, world_size
        self.per_rank = batch_size // world_size

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        for step, batch in enumerate(self.global_batches):
            if len(batch) != self.batch_size:
                raise ValueError(f"global batch {step} has {len(batch)} images, expected batch_size "
                                 f"{self.batch_size}: every rank must get {self.per_rank}")
            yield list(batch[lo:hi])
