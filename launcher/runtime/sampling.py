"""Which sample every rank reads at every micro-step, as a function of the global sample count.

The data order is one stream: epoch e is a permutation of the dataset seeded by (seed, e), and
the stream is cut into global batches. Optimizer step s consumes stream positions
[s*G, (s+1)*G); inside it micro-step k of rank r reads the `micro` positions starting at
s*G + (k*world + r)*micro. Resuming from step s therefore continues the exact order, mid-epoch
included, with nothing duplicated or skipped, and 1 process x micro 2m reads the same samples per
step as 2 processes x micro m.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from launcher.recipe_module import PositionalDataset


class GlobalOrder:
    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self._epoch, self._perm = -1, list(range(size))

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            self._perm = list(range(self.size))
            if self.shuffle:
                random.Random(f"{self.seed}-{epoch}").shuffle(self._perm)
            self._epoch = epoch
        return self._perm[offset]


class StreamData:
    """The dataset seen through the global order: item `position` of the stream.

    A PositionalDataset (`at(index, position)`, launcher.recipe_module) gets the stream position
    too, to key per-sample randomness (e.g. MLM masking) to it: each epoch differs, a resume
    repeats exactly.
    """

    def __init__(self, data, order: GlobalOrder) -> None:
        self.data, self.order = data, order
        self._at = data.at if isinstance(data, PositionalDataset) else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, position: int):
        index = self.order.index(position)
        return self._at(index, position) if self._at else self.data[index]


class StepBatches:
    """Stream positions for one rank, micro-step after micro-step, from `start_step` on.

    Iterable as a DataLoader `batch_sampler` over StreamData, so workers can prefetch ahead.
    """

    def __init__(self, order: GlobalOrder, global_batch: int, micro: int, world: int, rank: int,
                 start_step: int, end_step: int) -> None:
        self.order, self.global_batch, self.micro = order, global_batch, micro
        self.world, self.rank = world, rank
        self.accumulation = global_batch // (micro * world)
        self.start_step, self.end_step = start_step, end_step

    def positions(self, step: int, micro_step: int) -> range:
        start = step * self.global_batch + (micro_step * self.world + self.rank) * self.micro
        return range(start, start + self.micro)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.end_step):
            for k in range(self.accumulation):
                yield list(self.positions(step, k))

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.accumulation
