"""The drift report's numbers: a window of collected records against the production version's reference.

Records are found by their partitions (``collected/MODEL/date=YYYY-MM-DD/hour=HH/*.jsonl``, one listing per
day of the window), then kept by their own ``time`` in ``[since, until)``. They are streamed: one file at a
time, a few thousand records per numpy batch, counted into fixed-size histograms (:class:`WindowTally`), so
memory does not grow with the window.

Only records of the production version are judged (a version is judged against its own training data);
records of other versions (a canary, the version before a promotion) are counted apart, and the registry's
pointer moves inside the window are listed, so the report says which version served when.

Scores: the population stability index (PSI) of each statistic in the reference's decile bins, and of the
predicted-class distribution against the training label distribution (with its total variation distance).
The usual reading of PSI: below 0.1 no real change, 0.1–0.2 a moderate one, above 0.2 a significant one;
so the default verdict is drift when any PSI exceeds 0.2. Below a minimum number of records the verdict is
"not enough data": PSI of a small sample is mostly sampling noise (about (bins − 1) / n for n records).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import ModelFormatError, RegistryError
from components.modelfile import sha256_file
from components.monitoring.reference import FINE_BINS, INTENSITY, REFERENCE_FILE, FineCounts, Reference, fine_index
from components.monitoring.stats import HIST_BINS, ImageStats
from components.registry import Registry
from components.store import Store, join_key

COLLECTED_ROOT = "collected"
DRIFT, NO_DRIFT, NOT_ENOUGH = "drift", "no drift", "not enough data"
PSI_EPSILON = 1e-4  # stands in for an empty bin's share: ln(0) is undefined, and one empty bin is not infinite drift
RECORD_BATCH = 2048  # records per numpy update
CONFIDENCE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_HOUR_KEY = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/[^/]+\.jsonl$")


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2  # any input statistic above this: drift
    class_psi: float = 0.2  # predicted classes against training labels above this: drift
    min_records: int = 100  # fewer records of the production version: not enough data


@dataclass(frozen=True)
class StatisticDrift:
    name: str
    description: str
    psi: float
    edges: list[float]  # inner bin edges (0–1)
    training: list[float]  # training share per bin
    served: list[float]  # served share per bin


@dataclass(frozen=True)
class ClassDrift:
    class_names: list[str]
    training: list[float]  # training label shares
    served: list[float]  # predicted-class shares
    psi: float
    total_variation: float  # half the L1 distance: the share of predictions that would have to change class


@dataclass(frozen=True)
class DriftReport:
    model: str
    version: int
    since: str
    until: str
    verdict: str
    reason: str
    thresholds: Thresholds
    records: int  # of the production version, in the window
    other_versions: dict[str, int]  # version (or "none") → records in the window
    skipped: int  # lines that were not a usable record
    reference_count: int
    dataset_hash: str
    statistics: list[StatisticDrift]
    classes: ClassDrift
    confidence: dict[str, float]  # summary quantiles of the production version's confidences
    volume: dict[str, int]  # hour (ISO, UTC) → records of every version
    moves: list[dict[str, Any]] = field(default_factory=list)  # production pointer moves inside the window

    def drifted(self) -> list[str]:
        """The distributions whose PSI is above its threshold, worst first (none when too few records to judge)."""
        if self.verdict == NOT_ENOUGH:
            return []
        moved = [(s.psi, s.name) for s in self.statistics if s.psi > self.thresholds.psi]
        if self.classes.psi > self.thresholds.class_psi:
            moved.append((self.classes.psi, "predicted class"))
        return [name for _, name in sorted(moved, reverse=True)]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for KFP Metrics."""
        out: dict[str, float] = {"records": self.records, "drift": float(self.verdict == DRIFT),
                                 "class_psi": self.classes.psi, "class_total_variation": self.classes.total_variation}
        out |= {f"psi_{metric_name(s.name)}": s.psi for s in self.statistics}
        out |= {f"confidence_{k}": v for k, v in self.confidence.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted()}


def metric_name(name: str) -> str:
    """A statistic's name as a KFP metric name (letters, digits, underscores)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


# --- the window ---------------------------------------------------------------------------------------

def parse_time(value: str, now: datetime, option: str = "--since") -> datetime:
    """An ISO 8601 time (UTC when it names no zone) or a duration before ``now``: 30m, 24h, 7d, 2w."""
    text = value.strip()
    if match := _RELATIVE.fullmatch(text):
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected {option} as an ISO 8601 time (2026-12-03T08:00Z) or a duration before now "
                         f"(30m, 24h, 7d, 2w), got {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def window(since: str | None, until: str | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``[since, until)``: until defaults to now, since to 24 hours before until."""
    now = now or datetime.now(UTC)
    end = parse_time(until, now, "--until") if until else now
    start = parse_time(since, end, "--since") if since else end - timedelta(hours=24)
    if start >= end:
        raise ValueError(f"expected --since before --until, got {start.isoformat()} to {end.isoformat()}")
    return start, end


def hour_prefix(model: str) -> str:
    return join_key(COLLECTED_ROOT, model)


def window_files(store: Store, model: str, since: datetime, until: datetime) -> Iterator[str]:
    """Keys of the collected files whose hour partition overlaps ``[since, until)``, oldest first."""
    day = since.date()
    while day <= until.date():
        for key, _ in store.iter_info(join_key(hour_prefix(model), f"date={day.isoformat()}")):
            if (match := _HOUR_KEY.search(key)) is None:
                continue
            start = datetime.combine(date.fromisoformat(match.group(1)), datetime.min.time(), UTC) + timedelta(hours=int(match.group(2)))
            if start < until and start + timedelta(hours=1) > since:
                yield key
        day += timedelta(days=1)


def file_lines(store: Store, key: str) -> Iterator[bytes]:
    """The lines of one collected file, read in place (local store) or from a temporary download (Blob)."""
    local = store.local_path(key)
    if local is not None:
        with open(local, "rb") as f:
            yield from f
        return
    with tempfile.TemporaryDirectory(prefix="collected-") as tmp:
        path = Path(tmp, "part.jsonl")
        store.download_file(key, path)
        with open(path, "rb") as f:
            yield from f


# --- counting ------------------------------------------------------------------------------------------

@dataclass
class WindowTally:
    """What the report needs of the window, in fixed-size counters (the volume: one per hour)."""

    reference: Reference
    version: int
    tally: FineCounts = field(init=False)
    predicted: np.ndarray = field(init=False)
    confidence: np.ndarray = field(init=False)
    volume: Counter = field(default_factory=Counter)
    other_versions: Counter = field(default_factory=Counter)
    skipped: int = 0
    _batch: list[np.ndarray] = field(default_factory=list)  # rows of _row, at most RECORD_BATCH

    def __post_init__(self) -> None:
        self.tally = FineCounts([s.name for s in self.reference.statistics])
        self.predicted = np.zeros(len(self.reference.class_names), dtype=np.int64)
        self.confidence = np.zeros(FINE_BINS, dtype=np.int64)

    def add(self, record: dict[str, Any], time: datetime) -> None:
        self.volume[time.strftime("%Y-%m-%dT%H:00Z")] += 1
        served = record.get("version")
        if str(served) != str(self.version):  # the predictor writes a string ("3"); an int matches too
            self.other_versions["none" if served is None else str(served)] += 1
            return
        row = self._row(record)
        if row is None:
            self.skipped += 1
            return
        self._batch.append(row)
        if len(self._batch) >= RECORD_BATCH:
            self.flush()

    def _row(self, record: dict[str, Any]) -> np.ndarray | None:
        """``[mean…, std…, hist…, predicted, confidence]`` as floats; None when a field is missing, of the wrong
        length (another model's channels) or not a number."""
        channels, classes = self.reference.image_shape[0], len(self.predicted)
        try:
            row = np.array([*record["mean"], *record["std"], *record["hist"], record["predicted"], record["confidence"]],
                           dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            return None
        usable = (len(record["mean"]) == channels and len(record["std"]) == channels and len(record["hist"]) == HIST_BINS
                  and np.isfinite(row).all() and 0 <= row[-2] < classes and row[-2] == int(row[-2]))
        return row if usable else None

    def flush(self) -> None:
        if not self._batch:
            return
        rows, self._batch = np.stack(self._batch), []
        c = self.reference.image_shape[0]
        self.tally.add(ImageStats(mean=rows[:, :c], std=rows[:, c : 2 * c], hist=rows[:, 2 * c : 2 * c + HIST_BINS]))
        self.predicted += np.bincount(rows[:, -2].astype(np.int64), minlength=len(self.predicted))
        self.confidence += np.bincount(fine_index(rows[:, -1]), minlength=FINE_BINS)


def read_window(store: Store, model: str, since: datetime, until: datetime, tally: WindowTally) -> WindowTally:
    """Stream every record of ``[since, until)`` into ``tally``."""
    for key in window_files(store, model, since, until):
        for line in file_lines(store, key):
            record, time = parse_record(line)
            if record is None:
                tally.skipped += line.strip() != b""
            elif since <= time < until:
                tally.add(record, time)
    tally.flush()
    return tally


def parse_record(line: bytes) -> tuple[dict[str, Any] | None, datetime]:
    """A record and its time; ``(None, …)`` for a line that is not one (a torn last line, say)."""
    try:
        record = json.loads(line)
        time = datetime.fromisoformat(record["time"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return None, datetime.min.replace(tzinfo=UTC)
    return record, time.replace(tzinfo=UTC) if time.tzinfo is None else time.astimezone(UTC)


# --- scores --------------------------------------------------------------------------------------------

def psi(expected: list[float] | np.ndarray, actual: list[float] | np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index: sum over bins of (actual − expected) · ln(actual / expected)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    return round(float(np.sum((a - e) * np.log(a / e))), 6)


def shares(counts: np.ndarray) -> np.ndarray:
    return counts / max(1.0, float(counts.sum()))


def statistic_drift(reference: Reference, tally: FineCounts) -> list[StatisticDrift]:
    """Each per-image statistic in its reference bins, then the pooled intensity histogram."""
    out = []
    for i, binned in enumerate(reference.statistics):
        served = shares(binned.bin_counts(tally.counts[i]))
        out.append(StatisticDrift(binned.name, binned.description, psi(binned.fractions, served), binned.edges,
                                  binned.fractions, served.round(6).tolist()))
    served = tally.intensity()
    edges = [round(b / HIST_BINS, 6) for b in range(1, HIST_BINS)]
    out.append(StatisticDrift(INTENSITY, "share of all pixels in each intensity band (pooled histogram)",
                              psi(reference.intensity, served), edges, reference.intensity, served.round(6).tolist()))
    return out


def class_drift(reference: Reference, predicted: np.ndarray) -> ClassDrift:
    served = shares(predicted)
    training = np.asarray(reference.label_fractions)
    return ClassDrift(reference.class_names, reference.label_fractions, served.round(6).tolist(), psi(training, served),
                      round(float(np.abs(served - training).sum() / 2), 6))


def confidence_summary(counts: np.ndarray) -> dict[str, float]:
    """Quantiles of the confidences (to the fine bins' 0.001) and their mean; empty when there are none."""
    total = int(counts.sum())
    if total == 0:
        return {}
    cumulative = np.cumsum(counts) / total
    centres = (np.arange(FINE_BINS) + 0.5) / FINE_BINS
    summary = {f"p{round(q * 100):02d}": round(float(centres[np.searchsorted(cumulative, q)]), 4) for q in CONFIDENCE_QUANTILES}
    summary["mean"] = round(float((centres * counts).sum() / total), 4)
    return summary


def judge(records: int, statistics: list[StatisticDrift], classes: ClassDrift, thresholds: Thresholds, version: int) -> tuple[str, str]:
    """The verdict and its one-line reason."""
    if records < max(1, thresholds.min_records):  # no records at all is never a verdict
        return NOT_ENOUGH, (f"{records} records of version {version} in the window, fewer than the {thresholds.min_records} "
                            f"needed to tell drift from sampling noise: widen the window (--since) or collect more")
    moved = [f"{s.name} (PSI {s.psi:.3f})" for s in sorted(statistics, key=lambda s: -s.psi) if s.psi > thresholds.psi]
    if classes.psi > thresholds.class_psi:
        moved.append(f"predicted class (PSI {classes.psi:.3f})")
    if moved:
        return DRIFT, f"PSI above the threshold on {', '.join(moved)}"
    worst = max(statistics, key=lambda s: s.psi)
    return NO_DRIFT, (f"every PSI is at most {thresholds.psi:g} (inputs; highest: {worst.name} {worst.psi:.3f}) and "
                      f"{thresholds.class_psi:g} (predicted class: {classes.psi:.3f})")


# --- the report ----------------------------------------------------------------------------------------

def production_version(registry: Registry) -> int:
    """The version in production; a clear error when the model or its production version does not exist."""
    registry.check_exists()
    version = registry.production().version
    if version is None:
        raise RegistryError(f"model {registry.name!r} has no production version (nothing was promoted yet): "
                            "there is no version to judge drift against")
    return version


def load_reference(registry: Registry, version: int) -> Reference:
    """``monitoring.json`` of ``version``, checked against the SHA-256 its manifest lists."""
    entry = registry.manifest(version)["files"].get(REFERENCE_FILE)
    where = f"{registry.name} version {version}"
    if entry is None:
        raise ModelFormatError(f"{where} has no {REFERENCE_FILE} (it was pushed before drift reports existed, or without "
                               "its prepared data set): push a new version to monitor it")
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        path = Path(tmp, REFERENCE_FILE)
        registry.store.download_file(join_key(registry.version_prefix(version), REFERENCE_FILE), path)
        if (digest := sha256_file(path)) != entry["sha256"]:
            raise ModelFormatError(f"{REFERENCE_FILE} of {where} has SHA-256 {digest}, its manifest lists {entry['sha256']}")
        return Reference.from_json(path.read_bytes(), f"{REFERENCE_FILE} of {where}")


def pointer_moves(registry: Registry, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Production pointer changes inside the window (the audit trail of which version served when)."""
    moves = []
    for record in registry.history():
        at = datetime.fromisoformat(record["at"])
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        if since <= at < until:
            moves.append({k: record.get(k) for k in ("at", "action", "previous", "version", "by", "reason")})
    return sorted(moves, key=lambda m: m["at"])


def drift_report(store: Store, model: str, since: datetime, until: datetime, thresholds: Thresholds | None = None,
                 collected: Store | None = None) -> DriftReport:
    """Judge the window's records of the production version against its training reference. ``store`` holds
    the registry; ``collected`` the records (default: the same store; on AKS another container, which the
    predictor may write and the models' container may not)."""
    thresholds = thresholds or Thresholds()
    registry = Registry(store, model)
    version = production_version(registry)
    reference = load_reference(registry, version)
    tally = read_window(collected or store, model, since, until, WindowTally(reference, version))
    statistics = statistic_drift(reference, tally.tally)
    classes = class_drift(reference, tally.predicted)
    verdict, reason = judge(tally.tally.images, statistics, classes, thresholds, version)
    return DriftReport(model=registry.name, version=version, since=since.isoformat(), until=until.isoformat(), verdict=verdict,
                       reason=reason, thresholds=thresholds, records=tally.tally.images, other_versions=dict(tally.other_versions),
                       skipped=tally.skipped, reference_count=reference.count, dataset_hash=reference.dataset_hash,
                       statistics=statistics, classes=classes, confidence=confidence_summary(tally.confidence),
                       volume=dict(sorted(tally.volume.items())), moves=pointer_moves(registry, since, until))
