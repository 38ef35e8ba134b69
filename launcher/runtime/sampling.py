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

# Length grouping sorts this many global batches of the shuffled order at a time (as Hugging Face's
# group_by_length does with its "megabatches"): wide enough that each batch is nearly one length,
# narrow enough that the order stays random at the scale of an epoch.
GROUP_WINDOW_BATCHES = 50


class GlobalOrder:
    """Epoch e: a permutation of the dataset seeded by (seed, e).

    With `lengths` (each sample's length, e.g. tokens) and `group` (the global batch), each global
    batch is drawn from samples of about one length: the shuffled epoch is cut into windows of
    GROUP_WINDOW_BATCHES global batches, aligned to where the stream's batches start; each window
    is sorted by length, cut into global batches, and those are put back in a random order. A
    padded batch then carries little padding. It depends on the global batch only (not on
    micro-batch or world size), so the equivalences and the exact resume above still hold.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, lengths=None, group: int = 0) -> None:
        if size <= 0:
            raise ValueError("the training set is empty")
        if lengths is not None and (len(lengths) != size or group <= 0):
            raise ValueError(f"length grouping needs {size} lengths and a global batch, got {len(lengths)} and {group}")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.lengths, self.group = lengths, group
        self._epoch, self._perm = -1, list(range(size))

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            self._perm = list(range(self.size))
            if self.shuffle:
                random.Random(f"{self.seed}-{epoch}").shuffle(self._perm)
            if self.lengths is not None:
                self._perm = self._grouped(self._perm, epoch)
            self._epoch = epoch
        return self._perm[offset]

    def _grouped(self, perm: list[int], epoch: int) -> list[int]:
        lengths, group = self.lengths, self.group
        first = -(epoch * self.size) % group  # the epoch's first positions finish a batch begun before it
        out = perm[:first]
        rng = random.Random(f"{self.seed}-{epoch}-groups")
        window = group * GROUP_WINDOW_BATCHES
        for start in range(first, self.size, window):
            ordered = sorted(perm[start:start + window], key=lambda i: lengths[i])
            batches = [ordered[i:i + group] for i in range(0, len(ordered), group)]
            full = [b for b in batches if len(b) == group]
            rng.shuffle(full)
            # A short last batch stays last: it is the one that runs on into the next epoch.
            out += [i for batch in full + batches[len(full):] for i in batch]
        return out


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
