"""A worker's training input: its part of each epoch, streamed from the shards, shuffled, augmented, prefetched.

Data order, a pure function of ``(seed, epoch, worker, step)``:

1. Each epoch the training split's shards are put in a seeded random order; the records of the
   shards in that order form the epoch's sequence.
2. Worker ``w`` of ``N`` takes the ``w``-th block of ``L = steps_per_epoch × B`` records of that
   sequence, so it reads only about ``1/N`` of the shards each epoch.
3. Its block is cut into windows of about ``shuffle_window`` records (a multiple of ``B``), and the
   records of each window are put in a seeded random order; batch ``b`` is ``B`` consecutive records
   of that order. Preparation wrote every shard in random order already, so windows are samples of
   all classes.

Because the batch of any step can be computed without reading the batches before it, a job resumed
from a checkpoint's step sees exactly the batches an uninterrupted one would have seen, and memory
is a window's permutation plus a few memory-mapped shards, whatever the size of the data set.
The augmentation of a step is seeded from ``(seed, worker, global step)``.

Batches are assembled and augmented in ``loader_workers`` DataLoader processes (0: in the worker
itself), each preparing ``prefetch`` batches ahead. The loader processes are started once for the
whole job (``spawn``: the worker's RPC threads must not be forked) and read shards through their own
:class:`components.data.shards.ShardReader`; with a Blob store they share one local shard cache.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from components.data.prepare import DatasetInfo
from components.data.shards import ShardInfo, ShardReader
from components.presets import augment, resolve_augment
from components.store import Store, open_store
from components.training.config import TrainConfig


def steps_per_epoch(num_train: int, config: TrainConfig) -> int:
    steps = num_train // (config.num_workers * config.batch_size)
    if steps < 1:
        raise ValueError(
            f"expected at least {config.num_workers * config.batch_size} training images "
            f"(num_workers × batch_size), got {num_train}"
        )
    return steps


def step_seed(seed: int, worker: int, step: int) -> int:
    """The seed of one worker's randomness (augmentation, dropout) at one global step."""
    return int(np.random.SeedSequence([seed, worker, step]).generate_state(1)[0])


@dataclass(frozen=True)
class EpochPlan:
    """Which records make each of a worker's batches (the module docstring's three rules)."""

    shard_counts: tuple[int, ...]
    num_workers: int
    batch_size: int
    seed: int
    window: int  # records per shuffle window, a multiple of batch_size

    @classmethod
    def of(cls, shards: list[ShardInfo], config: TrainConfig) -> EpochPlan:
        per_window = max(1, round(config.shuffle_window / config.batch_size))
        return cls(tuple(s.count for s in shards), config.num_workers, config.batch_size, config.seed, per_window * config.batch_size)

    @property
    def steps(self) -> int:
        return sum(self.shard_counts) // (self.num_workers * self.batch_size)

    def batch(self, epoch: int, worker: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard numbers, rows) of the records of batch ``index`` of ``worker`` in ``epoch`` (1-based)."""
        if not 0 <= index < self.steps:
            raise IndexError(f"expected a batch index from 0 to {self.steps - 1}, got {index}")
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shard_counts))
        starts = np.concatenate([[0], np.cumsum(np.asarray(self.shard_counts)[order])])
        block = worker * self.steps * self.batch_size
        window, offset = divmod(index * self.batch_size, self.window)
        length = min(self.window, self.steps * self.batch_size - window * self.window)
        shuffled = np.random.default_rng([self.seed, epoch, worker, window]).permutation(length)
        positions = block + window * self.window + shuffled[offset : offset + self.batch_size]
        slot = np.searchsorted(starts, positions, side="right") - 1
        return order[slot], positions - starts[slot]


class StepBatches(Dataset):
    """Item ``g`` is the augmented batch of global step ``g``: ``(uint8 [B,C,H,W], int64 [B])``."""

    def __init__(self, store_uri: str, info: DatasetInfo, config: TrainConfig, worker: int, cache_dir: Path):
        self.store_uri, self.info, self.worker, self.cache_dir = store_uri, info, worker, cache_dir
        self.shards = info.shard_list("train")
        self.plan = EpochPlan.of(self.shards, config)
        self.seed, self.epochs = config.seed, config.epochs
        self.preset = resolve_augment(config.augment, info.image_shape[0])
        self._reader: ShardReader | None = None  # opened in the process that reads (pickled without it)

    def use_store(self, store: Store) -> None:
        """Read through an already open store (in-process loading); loader processes open their own."""
        self._reader = ShardReader(store, self.info.prefix, self.info.image_shape, self.cache_dir)

    def __len__(self) -> int:
        return self.plan.steps * self.epochs

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(step, self.plan.steps)
        shard_ids, rows = self.plan.batch(epoch + 1, self.worker, index)
        records = self._gather(shard_ids, rows)
        images = torch.from_numpy(np.ascontiguousarray(records["pixels"]))
        labels = torch.from_numpy(records["label"].astype(np.int64))
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.worker, step))
        return augment(images, self.preset, generator), labels

    def _gather(self, shard_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self._reader is None:
            self.use_store(open_store(self.store_uri))
        out = np.empty(len(rows), dtype=self._reader.dtype)
        for shard in np.unique(shard_ids):
            mask = shard_ids == shard
            out[mask] = self._reader.records(self.shards[shard])[rows[mask]]
        return out


def train_batches(store: Store, info: DatasetInfo, config: TrainConfig, worker: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every training batch of ``worker`` from global step ``start_step`` to the end of training, in order."""
    with tempfile.TemporaryDirectory(prefix=f"shard-cache-w{worker}-") as cache:
        dataset = StepBatches(store.uri, info, config, worker, Path(cache))
        steps = range(start_step, len(dataset))
        if config.loader_workers == 0:
            dataset.use_store(store)
            yield from (dataset[s] for s in steps)
            return
        loader = DataLoader(dataset, batch_size=None, sampler=steps, num_workers=config.loader_workers,
                            prefetch_factor=config.prefetch, persistent_workers=True, multiprocessing_context="spawn")
        yield from loader
