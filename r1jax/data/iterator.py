"""Deterministic, resumable, host-sharded batches of prompts.

The order of an epoch is a numpy permutation seeded by (seed, epoch), so the
position in the data is two integers that go into the checkpoint: a resumed
run sees exactly the prompts an uninterrupted one would. Every host walks the
same global order and keeps its own contiguous slice of each global batch,
so the hosts' slices are disjoint and together make up the batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class HostBatch(list):
    """This host's examples of a global batch; `offset` is the position of the first one in it."""

    offset: int = 0


class PromptIterator:
    """Yields this host's part of each global batch (a `HostBatch`, a list of examples).

    Args:
      source: a random-access sequence of examples (e.g. `load_generated(...)` or a task's `load`).
      batch_size: the global batch size, summed over hosts.
      seed: fixes the order of every epoch.
      shuffle: False walks the source in its stored order.
      drop_remainder: False also yields the last, smaller batch of an epoch;
        its examples are split over the hosts as evenly as possible.
      process_index, process_count: this host and the number of hosts (default:
        `jax.process_index()`, `jax.process_count()`).
      num_epochs: stop after this many epochs; None repeats forever.
    """

    def __init__(self, source: Sequence, *, batch_size: int, seed: int, shuffle: bool = True,
                 drop_remainder: bool = True, process_index: int | None = None, process_count: int | None = None,
                 num_epochs: int | None = None):
        if process_index is None or process_count is None:
            import jax  # only for the defaults: the data layer stays usable without devices

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if len(source) == 0:
            raise ValueError("PromptIterator got an empty source.")
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} must be a positive multiple of "
                f"process_count={process_count}: it is the global batch, split evenly over hosts.")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
        if drop_remainder and batch_size > len(source):
            raise ValueError(
                f"batch_size={batch_size} exceeds the {len(source)} examples of the source, "
                "so drop_remainder=True would yield nothing. Lower batch_size.")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.process_index = process_index
        self.process_count = process_count
        self.num_epochs = num_epochs
        self._epoch = 0
        self._index = 0  # examples of this epoch's order already handed out, over all hosts
        self._order_epoch, self._order = None, None

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(len(self.source), self.batch_size)
        return full + (rest > 0 and not self.drop_remainder)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The source indices of `epoch`, in the order they are handed out."""
        if self._order_epoch != epoch:
            num_examples = len(self.source)
            self._order = (np.random.default_rng([self.seed, epoch]).permutation(num_examples)
                           if self.shuffle else np.arange(num_examples))
            self._order_epoch = epoch
        return self._order

    def __iter__(self):
        return self

    def __next__(self) -> list[Any]:
        if self.num_epochs is not None and self._epoch >= self.num_epochs:
            raise StopIteration
        global_batch = self.epoch_order(self._epoch)[self._index:self._index + self.batch_size]
        self._index += len(global_batch)
        remaining = len(self.source) - self._index
        if remaining == 0 or (self.drop_remainder and remaining < self.batch_size):
            self._epoch, self._index = self._epoch + 1, 0
        parts = np.array_split(global_batch, self.process_count)
        indices = [int(i) for i in parts[self.process_index]]
        if hasattr(self.source, "__getitems__"):  # one batched read (array_record)
            batch = HostBatch(self.source.__getitems__(indices))
        else:
            batch = HostBatch(self.source[i] for i in indices)
        batch.offset = sum(len(part) for part in parts[:self.process_index])
        return batch

    def state(self) -> dict[str, int]:
        """The position of the next batch, JSON-serialisable, for the checkpoint."""
        return {"epoch": self._epoch, "index": self._index,
                "seed": self.seed, "num_examples": len(self.source)}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a `state()` of an iterator over the same data and seed."""
        if int(state["seed"]) != self.seed or int(state["num_examples"]) != len(self.source):
            raise ValueError(
                f"The saved data position is for seed={state['seed']} over "
                f"{state['num_examples']} examples, but this iterator has seed={self.seed} "
                f"over {len(self.source)}: the resumed run would see other prompts. "
                "Use the same seed and data as the saved run.")
        if not 0 <= int(state["index"]) < len(self.source) or int(state["epoch"]) < 0:
            raise ValueError(f"Invalid data position {state}.")
        self._epoch, self._index = int(state["epoch"]), int(state["index"])
        if self.drop_remainder and len(self.source) - self._index < self.batch_size:
            # saved with a smaller batch_size: this epoch has no full batch left
            self._epoch, self._index = self._epoch + 1, 0
