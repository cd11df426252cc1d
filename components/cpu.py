"""How many CPUs this container may use: the pod's CPU limit, from cgroup v2 or v1, else the CPUs available.

KServe's own ``cpu_count`` reads only the cgroup-v1 files, so on cgroup v2 (AKS, every current
distribution) it follows the node's cores: a 2-CPU pod on a 64-core node would run 64 torch threads
and a 36-thread decode pool, throttled and out of memory. The decode pool and torch's thread count
are both sized from :func:`cpu_limit`, so they agree; data preparation sizes its decode processes
from it too.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 mounts the cpu controller under one of these names, depending on the distribution.
_V1_DIRS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")


def cpu_limit(root: Path = CGROUP_ROOT, available: int | None = None) -> int:
    """Whole CPUs this container may use (at least 1): the cgroup quota, capped by the CPUs available."""
    available = available or cpus_available()
    quota = _v2_quota(root) or _v1_quota(root)
    if quota is None:
        return available
    # Floor: 1.5 CPUs run one thread at full speed, where two would both be throttled.
    return max(1, min(available, int(quota)))


def cpus_available() -> int:
    """CPUs this process may run on (its affinity mask), or the machine's count where there is no mask."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _v2_quota(root: Path) -> float | None:
    """``cpu.max`` is ``"QUOTA PERIOD"`` in microseconds, QUOTA ``max`` for no limit."""
    fields = _read(root / "cpu.max").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(root: Path) -> float | None:
    for name in _V1_DIRS:
        quota = _ratio(_read(root / name / "cpu.cfs_quota_us"), _read(root / name / "cpu.cfs_period_us"))
        if quota is not None:
            return quota
    return None


def _ratio(quota: str, period: str) -> float | None:
    """QUOTA/PERIOD in CPUs; None for no limit (-1) or anything that is not two positive integers."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
