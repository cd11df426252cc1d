"""The training split's monitoring statistics of a version: what a drift report compares served images with.

Push streams the prepared training shards once (:func:`compute_reference`) and stores the result with the
version as ``monitoring.json`` (:data:`REFERENCE_FILE`), hashed in its manifest like every other file, so a
drift report never re-reads the training set and judges against exactly what the version was trained on.

The statistics are a handful of scalars per image, derived from :func:`components.monitoring.stats.image_stats`
(:func:`scalar_statistics`): the per-channel mean and standard deviation, and the histogram's mass in the
dark and the bright quarter of the intensity range; plus the pooled pixel-intensity histogram of all images
(:data:`INTENSITY`) and the label distribution.

Binning, in one pass and bounded memory: every scalar lies in 0–1, so each is counted in a fixed-range fine
histogram of :data:`FINE_BINS` bins (a few KiB per statistic whatever the data set's size: no sample, no
second pass, no sort). The PSI bins are then deciles of that exact distribution, rounded to fine-bin
boundaries (:func:`quantile_edges`): equally filled training bins are what PSI needs (a fixed-range bin
that holds 0.1% of the training images would make its score noise), and a tie-heavy statistic simply gets
fewer bins. A served value is binned through the same fine index, so training and serving agree exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from components.data.prepare import read_info
from components.data.shards import iter_records, temporary_reader
from components.errors import ModelFormatError
from components.monitoring.stats import HIST_BINS, ImageStats, image_stats
from components.store import Store

REFERENCE_FILE = "monitoring.json"  # in the version folder, listed and hashed in MANIFEST.json
REFERENCE_FORMAT = 1
FINE_BINS = 1000  # resolution of the one-pass histograms: 0.001 on the 0–1 scale
PSI_BINS = 10  # deciles of the training distribution, the usual PSI binning
REFERENCE_BATCH = 256  # images per image_stats call: bounds its float32 copy, whatever the split's size
DARK_BINS = HIST_BINS // 4  # the histogram's first quarter: intensity below 0.25
INTENSITY = "intensity"  # the pooled pixel-intensity histogram, in the HIST_BINS fixed bins of 0–1
CHANNEL_NAMES = {1: ["L"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}


def channel_names(channels: int) -> list[str]:
    return CHANNEL_NAMES.get(channels, [str(c) for c in range(channels)])


def statistic_descriptions(channels: int) -> dict[str, str]:
    """Name → what it measures, in :func:`scalar_statistics`'s order."""
    names = channel_names(channels)
    described = {f"mean[{c}]": f"mean of channel {c} (brightness), 0–1" for c in names}
    described |= {f"std[{c}]": f"standard deviation of channel {c} (contrast), 0–1" for c in names}
    described["dark"] = "fraction of pixels darker than 0.25"
    described["bright"] = "fraction of pixels brighter than 0.75"
    return described


def scalar_statistics(stats: ImageStats) -> np.ndarray:
    """``float64 [N, S]``: the statistics of :func:`statistic_descriptions`, one row per image."""
    dark = stats.hist[:, :DARK_BINS].sum(axis=1, keepdims=True)
    bright = stats.hist[:, HIST_BINS - DARK_BINS :].sum(axis=1, keepdims=True)
    return np.concatenate([stats.mean, stats.std, dark, bright], axis=1)


def fine_index(values: np.ndarray) -> np.ndarray:
    """The fine bin of each 0–1 value (1.0 in the last bin; anything outside is clipped into range)."""
    return np.clip((values * FINE_BINS).astype(np.int64), 0, FINE_BINS - 1)


@dataclass
class FineCounts:
    """Counts of each statistic in :data:`FINE_BINS` fixed bins of 0–1, plus the summed intensity histogram:
    memory is fixed by the number of statistics, not of images."""

    names: list[str]
    counts: np.ndarray = field(init=False)  # int64 [S, FINE_BINS]
    hist_sum: np.ndarray = field(init=False)  # float64 [HIST_BINS]
    images: int = 0

    def __post_init__(self) -> None:
        self.counts = np.zeros((len(self.names), FINE_BINS), dtype=np.int64)
        self.hist_sum = np.zeros(HIST_BINS, dtype=np.float64)

    def add(self, stats: ImageStats) -> None:
        values = scalar_statistics(stats)
        rows = fine_index(values) + (np.arange(len(self.names)) * FINE_BINS)[None, :]
        self.counts += np.bincount(rows.ravel(), minlength=self.counts.size).reshape(self.counts.shape)
        self.hist_sum += stats.hist.sum(axis=0)
        self.images += len(values)

    def intensity(self) -> np.ndarray:
        """The pooled intensity histogram: the fraction of all pixels in each bin (every image weighs the same)."""
        return self.hist_sum / max(1, self.images)


@dataclass(frozen=True)
class Binned:
    """One statistic's PSI bins: ``edges`` are the inner edges (bin i is [edges[i-1], edges[i]), the outer
    bins open-ended), ``fractions`` the training share in each."""

    name: str
    description: str
    edges: list[float]
    fractions: list[float]

    def bin_counts(self, fine: np.ndarray) -> np.ndarray:
        """Counts per PSI bin from counts per fine bin (the served side, binned like the training side)."""
        edge_index = np.rint(np.asarray(self.edges) * FINE_BINS).astype(np.int64)
        coarse = np.searchsorted(edge_index, np.arange(FINE_BINS), side="right")
        return np.bincount(coarse, weights=fine, minlength=len(self.fractions))


@dataclass(frozen=True)
class Reference:
    """What ``monitoring.json`` holds (see the module's docstring and the README for the format)."""

    count: int  # training images the statistics were computed on
    dataset_prefix: str
    dataset_hash: str
    image_shape: list[int]
    class_names: list[str]
    label_fractions: list[float]  # training label distribution, in class_names order
    statistics: list[Binned]  # per-image statistics, PSI-binned
    intensity: list[float]  # pooled pixel-intensity histogram, HIST_BINS fixed bins of 0–1
    format: int = REFERENCE_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Reference:
        try:
            fields = json.loads(data)
            if fields.get("format") != REFERENCE_FORMAT:
                raise ModelFormatError(f"expected {source} in monitoring format {REFERENCE_FORMAT}, found {fields.get('format')!r}")
            fields["statistics"] = [Binned(**s) for s in fields["statistics"]]
            return cls(**fields)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise ModelFormatError(f"expected {source} to be a monitoring reference, got {type(exc).__name__}: {exc}") from None

    def binned(self, name: str) -> Binned:
        return next(s for s in self.statistics if s.name == name)


def quantile_edges(fine: np.ndarray, bins: int = PSI_BINS) -> list[int]:
    """Inner edges (fine-bin indices) splitting the counts ``fine`` into ``bins`` nearly equal parts;
    duplicates dropped, so ties (a constant statistic) give fewer, never empty-by-construction, bins."""
    cumulative = np.cumsum(fine) / max(1, fine.sum())
    cuts = np.searchsorted(cumulative, np.arange(1, bins) / bins, side="left") + 1  # first index after the quantile
    return sorted({int(c) for c in cuts if 0 < c < FINE_BINS})


def binned_statistic(name: str, description: str, fine: np.ndarray) -> Binned:
    edges = quantile_edges(fine)
    provisional = Binned(name, description, [e / FINE_BINS for e in edges], [0.0] * (len(edges) + 1))
    counts = provisional.bin_counts(fine)
    return Binned(name, description, provisional.edges, (counts / max(1, counts.sum())).round(6).tolist())


def build_reference(tally: FineCounts, labels: np.ndarray, class_names: list[str], image_shape: list[int],
                    dataset_prefix: str, dataset_hash: str) -> Reference:
    """The reference from a finished tally and the label counts (``int64 [K]``)."""
    descriptions = statistic_descriptions(image_shape[0])
    statistics = [binned_statistic(name, descriptions[name], tally.counts[i]) for i, name in enumerate(tally.names)]
    return Reference(count=tally.images, dataset_prefix=dataset_prefix, dataset_hash=dataset_hash, image_shape=list(image_shape),
                     class_names=list(class_names), label_fractions=(labels / max(1, labels.sum())).round(6).tolist(),
                     statistics=statistics, intensity=tally.intensity().round(6).tolist())


def tally_batches(batches: Iterable[tuple[np.ndarray, np.ndarray]], channels: int, classes: int) -> tuple[FineCounts, np.ndarray]:
    """Fine counts and label counts over ``(uint8 [n,C,H,W], labels [n])`` batches."""
    tally = FineCounts(list(statistic_descriptions(channels)))
    labels = np.zeros(classes, dtype=np.int64)
    for pixels, batch_labels in batches:
        tally.add(image_stats(pixels))
        labels += np.bincount(batch_labels, minlength=classes)[:classes]
    return tally, labels


def compute_reference(store: Store, dataset_prefix: str, split: str = "train") -> Reference:
    """Stream ``split`` of the prepared data set at ``dataset_prefix`` once (a few shards mapped at a time)."""
    info = read_info(store, dataset_prefix)
    with temporary_reader(store, info.prefix, info.image_shape) as reader:
        batches = iter_records(reader, info.shard_list(split), REFERENCE_BATCH)
        tally, labels = tally_batches(batches, info.image_shape[0], len(info.class_names))
    return build_reference(tally, labels, info.class_names, info.image_shape, info.prefix, info.content_hash)
