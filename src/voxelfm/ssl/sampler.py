"""Distributed infinite sampler that resumes exactly (REFERENCE §3.1 samplers, fixed).

The sample stream is the concatenation of per-epoch permutations of the dataset (epoch e uses
``default_rng([seed, e]).permutation(n)``). Global stream position ``p`` holds sample
``perm_{p // n}[p % n]``; rank r of w takes positions ``r, r + w, r + 2w, ...``. So across ranks
every sample is drawn exactly once per ``n`` consecutive positions (no repeats, no drops), and a
run resumes at any position by passing ``start`` = the number of stream positions consumed by all
ranks together (``steps × grad_accum × batch × world``). The reference skipped ``start_iter``
*samples* instead of batches and did not restore its RNG, so resumed runs saw different data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["InfiniteShardedSampler"]


class InfiniteShardedSampler(Sampler):
    """Yields ``(position, index)`` forever: the global stream position and the dataset index.

    Args:
        size: dataset length n.
        rank, world_size: this process's shard.
        seed: permutation seed (``train.seed``).
        start: global stream position to start from (multiple of ``world_size`` normally).
        shuffle: permute every epoch (else ``0..n-1`` repeated).
    """

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start: int = 0, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError("the dataset is empty: nothing to sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.size, self.rank, self.world_size = int(size), int(rank), int(world_size)
        self.seed, self.start, self.shuffle = int(seed), int(start), bool(shuffle)
        self._cached_epoch = -1
        self._cached_perm = np.arange(self.size)

    def permutation(self, epoch: int) -> np.ndarray:
        """``[n]`` dataset indices of epoch ``epoch``."""
        if epoch != self._cached_epoch:
            self._cached_perm = (np.random.default_rng([self.seed, epoch]).permutation(self.size)
                                 if self.shuffle else np.arange(self.size))
            self._cached_epoch = epoch
        return self._cached_perm

    def index_at(self, position: int) -> int:
        """Dataset index at global stream position ``position``."""
        epoch, offset = divmod(int(position), self.size)
        return int(self.permutation(epoch)[offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        p = self.start + self.rank
        while True:
            yield p, self.index_at(p)
            p += self.world_size
