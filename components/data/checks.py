"""What preparation learns about a data set while it streams through it, and the report a person reads.

:class:`Tally` sees every example once and keeps only counters and 12 bytes per image (an 8-byte
digest and the image's index): class counts per split, channel statistics of the training split, an
image-size histogram, the unreadable files, an order-independent content hash, and the digests that
reveal exact duplicates across splits (the same picture in train and test makes the test score a memory test). Memory is 12 bytes
per image plus counters — 12 MB for a million images — and nothing of the pixels.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from components.data.decode import CONTENT_MODULUS, Chunk
from components.presets import ChannelStats

SIZE_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048)  # shorter side, pixels: "<32", "32-63", … , ">=2048"
DUPLICATES_LISTED = 20
SEARCH_SLICE = 1 << 16  # digests searched at once: bounds the search's temporaries
SPLITS = ("train", "val", "test")  # in the order prepare writes them


def size_bucket(width: int, height: int) -> str:
    side = min(width, height)
    if side < SIZE_BUCKETS[0]:
        return f"<{SIZE_BUCKETS[0]}"
    for low, high in zip(SIZE_BUCKETS, SIZE_BUCKETS[1:]):
        if side < high:
            return f"{low}-{high - 1}"
    return f">={SIZE_BUCKETS[-1]}"


BUCKET_NAMES = [size_bucket(side, side) for side in (0, *SIZE_BUCKETS)]  # bucket i: sides below SIZE_BUCKETS[i]


@dataclass
class Tally:
    class_names: list[str]
    channels: int
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    _digests: dict[str, tuple[array, array]] = field(default_factory=dict)
    _content: int = 0

    def __post_init__(self) -> None:
        self.stats = ChannelStats(self.channels)

    def add(self, split: str, chunk: Chunk) -> None:
        if split not in self.counts:
            self.counts[split] = np.zeros(len(self.class_names), dtype=np.int64)
            self._digests[split] = (array("Q"), array("I"))  # indices: 4 bytes, files < 2^32
        self.counts[split] += np.bincount(chunk.labels, minlength=len(self.class_names))
        buckets = np.bincount(np.searchsorted(SIZE_BUCKETS, chunk.sizes.min(axis=1, initial=1 << 30), side="right"),
                              minlength=len(BUCKET_NAMES))
        for name, count in zip(BUCKET_NAMES, buckets.tolist()):
            if count:
                self.sizes[name] = self.sizes.get(name, 0) + count
        digests, indices = self._digests[split]
        # The first 8 bytes of each digest, read as a little-endian number: enough to find exact duplicates.
        digests.frombytes(np.ascontiguousarray(chunk.digests[:, :8]).view("<u8").astype(np.uint64).tobytes())
        indices.frombytes(chunk.indices.astype(np.uint32).tobytes())
        self._content = (self._content + chunk.content) % CONTENT_MODULUS
        if split == "train" and len(chunk.labels):
            self.stats.add(chunk.sums.sum(axis=0), len(chunk.labels) * chunk.pixels[0, 0].size)

    def skip(self, key: str, reason: str) -> None:
        self.unreadable.append({"file": key, "reason": reason})

    def content_hash(self, shape: list[int]) -> str:
        header = f"{self.class_names}|{shape}|{sum(int(c.sum()) for c in self.counts.values())}|"
        return hashlib.sha256(header.encode() + self._content.to_bytes(32, "big")).hexdigest()

    def histogram(self) -> dict[str, dict[str, int]]:
        return {split: {name: int(n) for name, n in zip(self.class_names, counts)} for split, counts in self.counts.items()}

    def duplicates(self, name: Callable[[int], str]) -> dict:
        """Exact duplicates (the same prepared pixels) of an earlier split's image, up to 20 listed by file.

        One sorted copy of the earlier splits' digests at a time (8 bytes an image); each later split is
        searched in slices, so nothing else here grows with the data set."""
        found: list[dict[str, str]] = []
        total = 0
        for later in range(1, len(SPLITS)):
            digests, indices = self._views(SPLITS[later])
            earlier = np.concatenate([self._views(s)[0] for s in SPLITS[:later]])
            if not len(earlier) or not len(digests):
                continue
            earlier.sort()
            for start in range(0, len(digests), SEARCH_SLICE):
                part = digests[start : start + SEARCH_SLICE]
                hits = np.flatnonzero(earlier[np.minimum(np.searchsorted(earlier, part), len(earlier) - 1)] == part)
                total += len(hits)
                for h in hits[: max(0, DUPLICATES_LISTED - len(found))] + start:
                    same_as = self._first_with(int(digests[h]), SPLITS[:later])
                    found.append({"split": SPLITS[later], "file": name(int(indices[h])), "same_as": name(same_as)})
        return {"across_splits": int(total), "listed": found}

    def _views(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A split's digests and image indices as views of their arrays' buffers (no copies)."""
        digests, indices = self._digests.get(split, (array("Q"), array("I")))
        return np.frombuffer(digests, dtype=np.uint64), np.frombuffer(indices, dtype=np.uint32)

    def _first_with(self, digest: int, splits: tuple[str, ...]) -> int:
        """The index of the first image in ``splits`` with ``digest`` (a scan: done for listed duplicates only)."""
        for split in splits:
            digests, indices = self._views(split)
            at = np.flatnonzero(digests == np.uint64(digest))
            if len(at):
                return int(indices[at[0]])
        raise AssertionError(f"digest {digest:#x} is in no split of {splits}")
