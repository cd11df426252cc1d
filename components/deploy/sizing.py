"""The predictor's CPU, memory and autoscaling target, derived from the version's profile.

A version's profile (:mod:`components.profile`, under ``"profile"`` in its ``MANIFEST.json``) measured the
runtime it will serve with: its peak memory, its served requests/s and p99 latency at a few concurrencies,
and the server's CPU time per request at each. From the runtime it chose:

- **memory**: the peak RSS of the process that loaded and served it, once per server process the pod runs
  (``--workers auto``: one per whole CPU of its limit, plus a supervising process that loads no model when
  there are several, counted at what a process holds before loading one), ×1.5 headroom (inputs larger than
  the profile's, the collector's queue, allocator fragmentation), rounded up to 128Mi below 1Gi and to 512Mi
  above; requests = limits, because memory cannot be throttled, only killed, and a pod above its request is
  the first one a node under pressure evicts;
- **scale target** (Knative concurrency per replica): the highest concurrency whose p99 stayed within the
  latency budget, without errors; one replica then holds as many requests in flight as it can answer in time;
- **CPU**: the cores that concurrency kept busy (requests/s × server CPU per request), rounded up to whole
  cores and at least 1; requests = limits, because the predictor sizes its processes and threads from its
  CPU limit.

The profile measured one server process; a pod with more CPUs runs more of them, so the concurrency target
and the throughput behind it are a floor for such a pod, never an overestimate. A profile measured without a
GPU (push runs on CPU nodes) sizes a GPU pod too: its CPU figures overstate what a GPU pod needs, but its
memory leaves out the CUDA context, so a GPU pod gets at least :data:`DEFAULT_MEMORY` then.

Each value carries its source: the profile (with the figures it came from), an operator's override (the
pipeline parameters ``serving_cpu``, ``serving_memory``, ``serving_scale_target``), or the default when the
version has no profile. Standard mode scales on CPU utilization (the HPA), which no profile measures.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_CPU = "1"
DEFAULT_MEMORY = "2Gi"
DEFAULT_MEMORY_MI = 2048
DEFAULT_SCALE_TARGETS = {"concurrency": 8, "rps": 100, "cpu": 70, "memory": 70}  # per replica: requests, req/s, % utilization
MEMORY_HEADROOM = 1.5
MIN_MEMORY_MI = 256
CPU_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
MEMORY_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")


@dataclass(frozen=True)
class Sized:
    """One derived value and where it came from."""

    value: str | int
    source: str


@dataclass(frozen=True)
class SizingOverrides:
    """What an operator set by hand; the empty value (``""``, ``0``) leaves it to the profile."""

    cpu: str = ""
    memory: str = ""
    scale_target: int = 0

    def __post_init__(self) -> None:
        if self.cpu and not CPU_QUANTITY.match(self.cpu):
            raise ValueError(f"expected serving_cpu as a Kubernetes CPU quantity like '2', '1.5' or '500m' (or '' to size "
                             f"from the profile), got {self.cpu!r}")
        if self.memory and not MEMORY_QUANTITY.match(self.memory):
            raise ValueError(f"expected serving_memory as a Kubernetes memory quantity like '1Gi' or '768Mi' (or '' to size "
                             f"from the profile), got {self.memory!r}")
        if self.scale_target < 0:
            raise ValueError(f"expected serving_scale_target >= 1 (or 0 to size from the profile), got {self.scale_target}")


@dataclass(frozen=True)
class Sizing:
    """The predictor's resources (requests = limits) and autoscaling target, each with its source."""

    cpu: Sized
    memory: Sized
    scale_target: Sized

    def settings_fields(self) -> dict[str, Any]:
        """The :class:`~components.deploy.inferenceservice.InferenceServiceSettings` fields these set."""
        return {"cpu": str(self.cpu.value), "memory": str(self.memory.value), "scale_target": int(self.scale_target.value)}

    def describe(self, scale_metric: str) -> list[str]:
        """One line per value: what it is, and why (``render`` prints these; the deploy step logs them)."""
        rows = [("cpu", self.cpu), ("memory", self.memory), (f"scale target ({scale_metric})", self.scale_target)]
        return [f"{label:<26} {sized.value!s:<7} {sized.source}" for label, sized in rows]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive_resources(profile: dict[str, Any] | None, overrides: SizingOverrides | None = None, *,
                     scale_metric: str = "concurrency", gpus: int = 0, origin: str = "profile") -> Sizing:
    """The predictor's CPU, memory and scale target from ``profile`` (None: the version has none), an
    operator's ``overrides`` winning over each, for a pod with ``gpus`` GPUs. ``origin`` names the profile in
    the sources ("profile v7")."""
    overrides = overrides or SizingOverrides()
    measured = None if profile is None else ChosenRuntime.from_profile(profile, origin)
    cpu = _pick(overrides.cpu, lambda: measured.cpu(), DEFAULT_CPU, measured)
    return Sizing(
        cpu=cpu,
        # After the CPU: the pod runs one server process per whole CPU, and each holds its own model.
        memory=_pick(overrides.memory, lambda: measured.memory(server_processes(str(cpu.value)), gpus), DEFAULT_MEMORY, measured),
        scale_target=_pick(overrides.scale_target, lambda: measured.scale_target(scale_metric),
                           DEFAULT_SCALE_TARGETS[scale_metric], measured),
    )


def server_processes(cpu: str) -> int:
    """Server processes a pod with CPU limit ``cpu`` runs by default: one per whole CPU, at least one
    (``--workers auto``, from the cgroup quota rounded down, as components.cpu.cpu_limit reads it)."""
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, math.floor(cores))


def _pick(override: str | int, derived: Any, default: str | int, measured: ChosenRuntime | None) -> Sized:
    if override:
        return Sized(override, "operator override")
    if measured is None:
        return Sized(default, "default: no profile")
    return derived()


@dataclass(frozen=True)
class ChosenRuntime:
    """The measurements of the runtime the profile chose (the one ``--runtime auto`` serves)."""

    origin: str
    runtime: str
    budget_ms: float
    peak_rss_mib: float | None
    base_rss_mib: float | None
    served: list[dict[str, Any]]
    within_budget: int | None
    on_gpu: bool

    @classmethod
    def from_profile(cls, profile: dict[str, Any], origin: str) -> ChosenRuntime:
        runtime = profile.get("runtime")
        measured = (profile.get("runtimes") or {}).get(runtime)
        if not isinstance(measured, dict) or not measured.get("served") or "peak_rss_mib" not in measured:
            raise ValueError(f"expected {origin} to hold the measurements (peak_rss_mib, served) of its chosen runtime "
                             f"{runtime!r}, found runtimes {sorted(profile.get('runtimes') or {})}")
        return cls(origin, str(runtime), float(profile["latency_budget_ms"]), measured["peak_rss_mib"],
                   measured.get("base_rss_mib"), measured["served"], measured.get("within_budget"),
                   str((profile.get("machine") or {}).get("device", "cpu")).startswith("cuda"))

    def level(self) -> dict[str, Any]:
        """The measured level one replica is sized for: the highest concurrency within the budget, else the lowest."""
        by_concurrency = {row["concurrency"]: row for row in self.served}
        return by_concurrency.get(self.within_budget) or by_concurrency[min(by_concurrency)]

    def memory(self, processes: int, gpus: int = 0) -> Sized:
        if self.peak_rss_mib is None:  # the profile ran where /proc was not there to read
            return Sized(DEFAULT_MEMORY, f"default: {self.origin} measured no peak RSS")
        if processes == 1:
            held, what = self.peak_rss_mib, f"peak RSS {self.peak_rss_mib:.0f} MiB"
        else:
            supervisor = self.base_rss_mib if self.base_rss_mib is not None else self.peak_rss_mib
            held = processes * self.peak_rss_mib + supervisor
            what = (f"{processes} server processes (one per CPU) × peak RSS {self.peak_rss_mib:.0f} MiB "
                    f"+ their supervisor {supervisor:.0f} MiB")
        wanted = held * MEMORY_HEADROOM
        value = memory_quantity(wanted)
        source = f"{self.origin}: {what} ({self.runtime}) ×{MEMORY_HEADROOM:g} = {wanted:.0f} MiB, rounded up to {value}"
        if gpus and not self.on_gpu and wanted < DEFAULT_MEMORY_MI:
            return Sized(DEFAULT_MEMORY, f"{source}; measured without a GPU, so raised to {DEFAULT_MEMORY} for the CUDA "
                                         f"context a GPU pod adds")
        return Sized(value, source)

    def cpu(self) -> Sized:
        row = self.level()
        cores = row["rps"] * row["cpu_ms"] / 1000
        value = max(1, math.ceil(cores - 1e-9))
        return Sized(str(value), f"{self.origin}: {row['rps']:.0f} req/s × {row['cpu_ms']:.2f} ms server CPU per request "
                                 f"at concurrency {row['concurrency']} ({self.runtime}) = {cores:.2f} cores, whole cores, at least 1")

    def scale_target(self, scale_metric: str) -> Sized:
        if scale_metric != "concurrency":
            return Sized(DEFAULT_SCALE_TARGETS[scale_metric], f"default: the profile measures concurrency, not {scale_metric}")
        if self.within_budget is None:
            first = self.level()
            return Sized(1, f"{self.origin}: no concurrency kept p99 within {self.budget_ms:g} ms ({self.runtime}: "
                            f"p99 {first['p99_ms']:.1f} ms at concurrency {first['concurrency']}), so 1")
        row = self.level()
        return Sized(self.within_budget, f"{self.origin}: highest concurrency with p99 within {self.budget_ms:g} ms "
                                         f"({self.runtime}: p99 {row['p99_ms']:.1f} ms at {row['concurrency']})")


def memory_quantity(mib: float) -> str:
    """``mib`` rounded up to a Kubernetes quantity: 128Mi steps below 1Gi, 512Mi steps above, at least 256Mi."""
    step = 128 if mib < 1024 else 512
    rounded = max(MIN_MEMORY_MI, step * math.ceil(mib / step))
    return f"{rounded // 1024}Gi" if rounded % 1024 == 0 else f"{rounded}Mi"
