"""A profile per model version: what serving it costs, measured per runtime, before its manifest is written.

For each runtime the version folder has (``torch`` always; ``onnx`` when ``model.onnx`` passed its parity
check), a fresh child process (:mod:`components.profile_child`) loads the version in the real predictor
(:class:`serving.model.ImageClassifier`), measures the load and the forward pass at batch 1 and at the
batcher's maximum, then serves it behind the real HTTP server on a free loopback port. This process drives
it over HTTP (asyncio + aiohttp, closed loop: each of C clients sends its next v2 request when the last one
is answered) for a short bounded time per concurrency, and reads the child's CPU time and peak RSS
(``VmHWM``) from ``/proc``. A fresh process per runtime: one runtime's memory never counts for the other.

The profile (a few hundred bytes per runtime) goes into ``MANIFEST.json`` under :data:`PROFILE_KEY`::

    {"format": 1, "runtime": "onnx", "latency_budget_ms": 100.0, "seconds_per_level": 2.0, "max_batch": 64,
     "machine": {"cpu": "AMD EPYC 7763 64-Core Processor", "cores": 2, "workers": 1, "threads": 1, "device": "cpu"},
     "runtimes": {"torch": {"load_s": 0.41, "peak_rss_mib": 717.0, "base_rss_mib": 420.0,
                            "forward_ips": {"1": 2900.0, "64": 21000.0},
                            "served": [{"concurrency": 1, "rps": 480.0, "p50_ms": 2.0, "p99_ms": 3.5,
                                        "cpu_ms": 0.9, "errors": 0}, …],
                            "within_budget": 32}, "onnx": {…}}}

One server process with one compute thread is measured, as a pod runs one such process per CPU of its
limit. ``peak_rss_mib`` is that process's high-water mark over load, forward and serving; ``base_rss_mib``
what it held before loading any model (imports only: about what a pod's supervising process holds when it
runs more than one server process). ``within_budget`` is the highest concurrency whose p99 stayed within
the budget with no errors (None: none did); ``runtime`` is the faster one: the most requests/s served within
the budget, the forward pass at the maximum batch deciding when those are within :data:`TIE` of each other. ``--runtime auto`` serves it, and
:mod:`components.deploy.sizing` sizes the InferenceService from its measurements.

The load comes from Python in this process, sharing the machine's cores with the server: on a small
machine the client is part of what is measured, so the figures are a floor, not the server's ceiling.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import ProjectError
from components.modelfile import MANIFEST_FILE, ONNX_FILE, ModelCard, build_manifest, load_card
from components.runtimes import ONNX, TORCH
from serving.batching import BatchingOptions

PROFILE_KEY = "profile"
PROFILE_FORMAT = 1
SERVED_NAME = "profile"  # the model name the child serves under
TIE = 0.05  # served req/s this close (relative) are noise on a shared machine: the forward pass decides
REQUEST_TIMEOUT_S = 10.0  # a request unanswered this long counts as an error


class ProfileError(ProjectError):
    """A runtime could not be loaded, served or measured."""


@dataclass(frozen=True)
class ProfileSettings:
    """How the profile measures; the defaults keep the small CNN's whole profile well under a minute."""

    latency_budget_ms: float = 100.0  # p99 a concurrency level must stay within to count
    concurrencies: tuple[int, ...] = (1, 8, 32)
    seconds_per_level: float = 2.0  # measured, after a short warm-up at the same concurrency
    max_batch: int = BatchingOptions.max_batch_size  # the batcher's maximum, as the server runs it
    warmup_s: float = 0.3
    forward_s: float = 0.5  # per batch size
    # Compute threads of the served runtime. A pod runs one server process per CPU of its limit (--workers auto),
    # each with one compute thread (serving.workers.WorkerPlan): the profile measures such a process.
    threads: int = 1
    start_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "concurrencies", tuple(sorted(set(self.concurrencies))))
        if not self.concurrencies or self.concurrencies[0] < 1:
            raise ValueError(f"expected concurrencies of at least 1, got {self.concurrencies}")
        if self.latency_budget_ms <= 0 or self.seconds_per_level <= 0 or self.max_batch < 1 or self.threads < 1:
            raise ValueError(f"expected latency_budget_ms > 0, seconds_per_level > 0, max_batch >= 1 and threads >= 1, got "
                             f"{self.latency_budget_ms}, {self.seconds_per_level}, {self.max_batch} and {self.threads}")


def profile_version(folder: Path, settings: ProfileSettings | None = None) -> dict[str, Any]:
    """The profile of the version in ``folder`` (weights and card, maybe ``model.onnx``; no manifest needed)."""
    settings = settings or ProfileSettings()
    card = load_card(folder)  # a bad card is refused before any process starts
    body = request_body(card)
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        served = provisional_version(folder, Path(tmp) / "version")
        measured = {runtime: profile_runtime(served, runtime, body, settings, Path(tmp)) for runtime in available_runtimes(folder)}
    machine = {"cpu": cpu_model(), **next(iter(measured.values())).pop("machine")}
    for other in measured.values():
        other.pop("machine", None)
    return {
        "format": PROFILE_FORMAT,
        "runtime": choose_runtime(measured, settings.max_batch),
        "latency_budget_ms": settings.latency_budget_ms,
        "seconds_per_level": settings.seconds_per_level,
        "max_batch": settings.max_batch,
        "machine": machine,
        "runtimes": measured,
    }


def available_runtimes(folder: Path) -> list[str]:
    """The runtimes ``folder`` can be served with: torch always, onnx when the export passed (its file is there)."""
    return [TORCH, ONNX] if (folder / ONNX_FILE).is_file() else [TORCH]


def provisional_version(folder: Path, dest: Path) -> Path:
    """A copy of ``folder`` with a manifest of its own files, so the real predictor loads it as it loads any
    version (hash checks included). The version itself gets its manifest later, from push, with this profile."""
    dest.mkdir(parents=True)
    for path in folder.iterdir():
        if path.is_file() and path.name != MANIFEST_FILE:
            _link_or_copy(path, dest / path.name)
    metadata: dict[str, Any] = {"version": None, "note": "provisional, for the profile"}
    if (dest / ONNX_FILE).is_file():
        metadata["onnx"] = {"passed": True}  # the export writes model.onnx only when its parity check passed
    (dest / MANIFEST_FILE).write_text(json.dumps(build_manifest(dest, metadata)))
    return dest


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # no copy of the weights where the file system allows
    except OSError:
        shutil.copyfile(source, target)


def request_body(card: ModelCard, seed: int = 0) -> bytes:
    """One v2 JSON request with one image of the card's input shape (pixel values 0–255)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (1, *card.input_shape))
    return json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": list(pixels.shape),
                                   "data": pixels.ravel().tolist()}]}).encode()


def profile_runtime(version: Path, runtime: str, body: bytes, settings: ProfileSettings, scratch: Path) -> dict[str, Any]:
    """One runtime's measurements: load and forward (from the child), then served levels and peak RSS."""
    port, result, log = free_port(), scratch / f"{runtime}.json", scratch / f"{runtime}.log"
    proc = start_child(version, runtime, port, result, settings, log)
    try:
        wait_until_serving(proc, port, runtime, log, settings.start_timeout_s)
        loaded = json.loads(result.read_text())
        served = asyncio.run(drive_levels(f"http://127.0.0.1:{port}", body, proc.pid, settings))
        peak = peak_rss_mib(proc.pid)  # before the process ends: its high-water mark over load, forward and serving
    finally:
        stop_child(proc)
    for row in served:
        if row["rps"] == 0:
            raise ProfileError(f"runtime {runtime} answered no request at concurrency {row['concurrency']} "
                               f"({row['errors']} errors); its server's log ends:\n{_tail(log)}")
    return {"load_s": loaded["load_s"], "peak_rss_mib": peak, "base_rss_mib": loaded["base_rss_mib"],
            "forward_ips": loaded["forward_ips"], "served": served,
            "within_budget": within_budget(served, settings.latency_budget_ms), "machine": loaded["machine"]}


def start_child(version: Path, runtime: str, port: int, result: Path, settings: ProfileSettings, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "components.profile_child", "--version", str(version), "--runtime", runtime,
               "--port", str(port), "--result", str(result), "--max-batch", str(settings.max_batch),
               "--forward-seconds", str(settings.forward_s), "--name", SERVED_NAME, "--threads", str(settings.threads)]
    with open(log, "wb") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)


def wait_until_serving(proc: subprocess.Popen, port: int, runtime: str, log: Path, timeout_s: float) -> None:
    from serving.client import is_ready

    deadline = time.monotonic() + timeout_s
    while not is_ready(f"http://127.0.0.1:{port}", SERVED_NAME):
        if proc.poll() is not None:
            raise ProfileError(f"runtime {runtime}: the profiling server exited with code {proc.returncode} before it was "
                               f"ready; its log ends:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise ProfileError(f"runtime {runtime}: the profiling server was not ready after {timeout_s:g} s; its log ends:\n{_tail(log)}")
        time.sleep(0.1)


def stop_child(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:]


# -- the load ---------------------------------------------------------------------------------------------


async def drive_levels(url: str, body: bytes, pid: int, settings: ProfileSettings) -> list[dict[str, Any]]:
    """One row per concurrency: served req/s, p50/p99 (ms), the server's CPU ms per request, errors."""
    import aiohttp

    path = f"{url}/v2/models/{SERVED_NAME}/infer"
    rows = []
    for concurrency in settings.concurrencies:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as session:
            await run_clients(session, path, body, concurrency, settings.warmup_s)  # not counted
            cpu_before, started = cpu_seconds(pid), time.perf_counter()
            latencies, errors = await run_clients(session, path, body, concurrency, settings.seconds_per_level)
            elapsed, cpu_after = time.perf_counter() - started, cpu_seconds(pid)
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        rows.append(level_row(concurrency, latencies, errors, elapsed, cpu))
    return rows


async def run_clients(session: Any, path: str, body: bytes, concurrency: int, seconds: float) -> tuple[list[float], int]:
    """``concurrency`` closed-loop clients for ``seconds``: the latencies (s) of answered requests, and the errors."""
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(client(session, path, body, deadline, latencies, errors) for _ in range(concurrency)))
    return latencies, errors[0]


async def client(session: Any, path: str, body: bytes, deadline: float, latencies: list[float], errors: list[int]) -> None:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    while (sent := time.perf_counter()) < deadline:
        try:
            async with session.post(path, data=body, headers=headers) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            latencies.append(time.perf_counter() - sent)
        else:
            errors[0] += 1


def level_row(concurrency: int, latencies: list[float], errors: int, elapsed: float, cpu_s: float | None) -> dict[str, Any]:
    answered = len(latencies)
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000).tolist() if answered else (None, None)
    return {
        "concurrency": concurrency,
        "rps": round(answered / elapsed, 1),
        "p50_ms": None if p50 is None else round(p50, 2),
        "p99_ms": None if p99 is None else round(p99, 2),
        "cpu_ms": None if cpu_s is None or not answered else round(cpu_s * 1000 / answered, 3),
        "errors": errors,
    }


def within_budget(served: list[dict[str, Any]], budget_ms: float) -> int | None:
    """The highest concurrency answered within ``budget_ms`` at p99 with no errors; None when none was."""
    fitting = [row["concurrency"] for row in served if row["errors"] == 0 and row["p99_ms"] is not None and row["p99_ms"] <= budget_ms]
    return max(fitting, default=None)


def choose_runtime(measured: dict[str, dict[str, Any]], max_batch: int) -> str:
    """The faster runtime: the most req/s served within the budget, the forward pass at ``max_batch`` breaking a tie."""

    def served_within(name: str) -> float:
        limit = measured[name]["within_budget"]
        return max((row["rps"] for row in measured[name]["served"] if limit is not None and row["concurrency"] <= limit), default=0.0)

    def faster(a: str, b: str) -> str:
        sa, sb = served_within(a), served_within(b)
        if abs(sa - sb) > TIE * max(sa, sb):
            return a if sa > sb else b
        return a if measured[a]["forward_ips"][str(max_batch)] >= measured[b]["forward_ips"][str(max_batch)] else b

    return reduce(faster, measured)


# -- the server process, from /proc ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (every thread), from ``/proc/PID/stat``; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces; fields after it are fixed
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident memory (``VmHWM``) of ``pid`` in MiB; None where there is no /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)  # kB
    return None


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (``platform.processor()`` is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


# -- reading it back ---------------------------------------------------------------------------------------


def format_profile(profile: dict[str, Any]) -> list[str]:
    """The profile as a table, one row per runtime and concurrency (``registry show`` prints it)."""
    machine = profile.get("machine") or {}
    lines = [f"profile: serves {profile.get('runtime')} (p99 budget {profile.get('latency_budget_ms')} ms; "
             f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('threads', '?')} threads, "
             f"{machine.get('device', '?')})",
             f"  {'runtime':<8} {'load s':>6} {'peak MiB':>8} {'fwd/s b1':>9} {'fwd/s max':>9}  "
             f"{'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>6} {'errors':>6}"]
    max_batch = str(profile.get("max_batch"))
    for name, m in (profile.get("runtimes") or {}).items():
        head = (f"  {name:<8} {_num(m.get('load_s'), 2):>6} {_num(m.get('peak_rss_mib'), 0):>8} "
                f"{_num((m.get('forward_ips') or {}).get('1'), 0):>9} {_num((m.get('forward_ips') or {}).get(max_batch), 0):>9}")
        for row in m.get("served") or []:
            mark = " *" if row.get("concurrency") == m.get("within_budget") else ""
            lines.append(f"{head}  {row.get('concurrency'):>4} {_num(row.get('rps'), 0):>8} {_num(row.get('p50_ms'), 1):>7} "
                         f"{_num(row.get('p99_ms'), 1):>7} {_num(row.get('cpu_ms'), 2):>6} {row.get('errors', '-'):>6}{mark}")
            head = " " * len(head)
    lines.append("  (* the highest concurrency within the p99 budget: the autoscaling target)")
    return lines


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
