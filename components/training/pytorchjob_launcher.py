"""The ``pytorchjob`` launcher (legacy: Training Operator v1), and the job watch that the ``trainjob`` launcher shares.

The step creates the PyTorchJob under a name unique to the pipeline run (a name that exists already
is an error, never reused: it is left over from an earlier attempt of the same run), follows the log
of every replica's pod into its own output (``[master-0] …``, ``[worker-1] …``; a pod the operator
recreates is followed again), reports pod phase changes (a pod stuck ``Pending`` for want of a GPU is
visible, not silent), and waits for ``Succeeded`` or ``Failed``:

- ``Succeeded``: return; the model is in the store.
- ``Failed``: raise :class:`TrainingError` naming the replica that failed first, its exit code and
  what that code means under ``restartPolicy: ExitCode``, and its last log lines.
- the timeout passes, the step is cancelled (SIGTERM, as Argo sends it, or Ctrl-C), or the watch
  itself breaks: the job is deleted (its pods with it) before the error propagates, so nothing keeps
  holding GPUs for a step that no longer waits for it.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO
from urllib.parse import urlparse

from components.errors import TrainingError
from components.kube import (
    SYSTEM_CLOCK,
    TERMINAL,
    Clock,
    JobClient,
    JobExistsError,
    JobStatus,
    KubernetesJobClient,
    PodInfo,
    current_namespace,
)
from components.training.config import TrainConfig
from components.training.pytorchjob import PyTorchJobSettings, build_pytorchjob

TAIL_LINES = 30


class Cancelled(KeyboardInterrupt):
    """The step was cancelled (SIGTERM)."""


class LogStreams:
    """One thread per pod instance copies its log into ``out`` and keeps the replica's last lines."""

    def __init__(self, client: JobClient, out: TextIO):
        self.client, self.out = client, out
        self.tails: dict[str, deque[str]] = {}
        self._followed: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def follow(self, pods: list[PodInfo]) -> None:
        for pod in pods:
            if pod.started and pod.uid not in self._followed:
                self._followed.add(pod.uid)
                self.tails.setdefault(pod.replica, deque(maxlen=TAIL_LINES))
                thread = threading.Thread(target=self._pump, args=(pod,), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, pod: PodInfo) -> None:
        try:
            for line in self.client.stream_logs(pod.name, pod.container):
                self._write(pod.replica, line)
        except TrainingError as error:  # a broken log stream loses lines, not the job: the watch goes on
            self._write("launcher", str(error))

    def _write(self, replica: str, line: str) -> None:
        with self._lock:
            if replica in self.tails:
                self.tails[replica].append(line)
            self.out.write(f"[{replica}] {line}\n")
            self.out.flush()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def tail(self, replica: str) -> list[str]:
        with self._lock:
            return list(self.tails.get(replica, ()))


def launch_job(manifest: dict[str, Any], client: JobClient, timeout_s: float, out: TextIO | None = None, poll_s: float = 5.0,
               clock: Clock = SYSTEM_CLOCK, max_restarts: int | None = None,
               network_policy: dict[str, Any] | None = None) -> None:
    """Create the job (a PyTorchJob or a TrainJob), stream its logs, and return when it succeeded; raise
    :class:`TrainingError` otherwise. ``max_restarts``: delete and fail the job once its pods show more
    whole-job restarts than this (JobSet's ``restart-attempt`` label; the PyTorchJob counts its own).
    ``network_policy``: the job's own NetworkPolicy, created before the job and owned by it."""
    out = out or sys.stdout
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    _create(manifest, client, network_policy, out)
    streams = LogStreams(client, out)
    finished = False
    try:
        with _sigterm_cancels():
            status, pods = _watch(client, f"{kind} {name}", name, streams, clock.monotonic() + timeout_s, timeout_s, poll_s, clock, out, max_restarts)
        finished = True
    finally:
        if not finished:
            _say(out, f"deleting {kind} {name}")
            client.delete_job(name)
    if status.phase == "Failed":
        raise TrainingError(failure_message(f"{kind} {name}", status, pods, streams))
    _say(out, f"{kind} {name} succeeded")


def _create(manifest: dict[str, Any], client: JobClient, network_policy: dict[str, Any] | None, out: TextIO) -> None:
    """The policy first (the pods are isolated from their first packet), then the job, then the policy's owner."""
    kind, meta = manifest["kind"], manifest["metadata"]
    if network_policy:
        client.create_policy(network_policy)
    try:
        uid = client.create_job(manifest)
    except JobExistsError as error:
        raise TrainingError(f"{error}. Job names are unique per pipeline run, so it is left over from an earlier attempt of this run: "
                            f"delete it (kubectl delete {kind.lower()} {meta['name']} -n {meta.get('namespace', '')}) or start a new run") from None
    except TrainingError:
        if network_policy:
            client.delete_policy(network_policy["metadata"]["name"])
        raise
    _say(out, f"created {kind} {meta['name']}")
    if network_policy:
        owner = {"apiVersion": manifest["apiVersion"], "kind": kind, "name": meta["name"], "uid": uid}
        client.own_policy(network_policy["metadata"]["name"], owner)
        _say(out, f"NetworkPolicy {network_policy['metadata']['name']}: only the pods of {meta['name']} reach its pods")


launch_pytorchjob = launch_job  # the name the PyTorchJob path has always used


def _watch(client: JobClient, title: str, name: str, streams: LogStreams, deadline: float, timeout_s: float, poll_s: float,
           clock: Clock, out: TextIO,
           max_restarts: int | None) -> tuple[JobStatus, list[PodInfo]]:
    seen: dict[str, str] = {}
    reported_restarts = 0
    while True:
        status, pods = client.get_status(name), client.list_pods(name)
        streams.follow(pods)
        _report_changes(status, pods, seen, out)
        if status.phase in TERMINAL:
            streams.join(timeout_s=30)
            return status, pods
        restarts = max((p.restart_attempt for p in pods), default=0)
        if restarts > reported_restarts:
            _say(out, f"{title} restarted (attempt {restarts}); its ranks resume from the latest checkpoint")
            reported_restarts = restarts
        if max_restarts is not None and restarts > max_restarts:
            raise TrainingError(f"{title} was restarted {restarts} times, more than the backoff limit {max_restarts}: "
                                f"{failure_message(title, status, pods, streams)}")
        if clock.monotonic() > deadline:
            states = ", ".join(f"{p.replica} {p.phase}" for p in sorted(pods, key=lambda p: p.replica)) or "no pods"
            raise TrainingError(f"{title} did not finish within {timeout_s:g} s (job {status.phase}; {states})")
        clock.sleep(poll_s)


def _report_changes(status: JobStatus, pods: list[PodInfo], seen: dict[str, str], out: TextIO) -> None:
    """One line per change of the job's phase or a pod's phase, so a stuck job is never silent."""
    current = {"job": f"{status.phase}{': ' + status.message if status.message else ''}"}
    current.update({p.replica: f"{p.phase}{' (' + p.waiting_reason + ')' if p.waiting_reason else ''}" for p in pods})
    for key, value in sorted(current.items()):
        if seen.get(key) != value:
            _say(out, f"{key}: {value}")
            seen[key] = value


def failure_message(title: str, status: JobStatus, pods: list[PodInfo], streams: LogStreams) -> str:
    """Which replica failed first, with which exit code and what it means, and its last lines.

    ``title``: the kind and name, e.g. ``TrainJob train-abc``."""
    failed = sorted((p for p in pods if p.exit_code not in (None, 0)), key=lambda p: p.finished_at or "")
    reason = status.message or "no reason given"
    if not failed:
        return f"{title} failed: {reason}; no replica reported a failing exit code (kubectl describe {title.lower()})"
    pod = failed[0]
    meaning = "permanent: bad configuration or data" if pod.exit_code < 128 else "retried until the backoff limit ran out"
    tail = "\n".join(f"  {line}" for line in streams.tail(pod.replica)) or "  (no output)"
    return (f"{title} failed: {reason}; {pod.replica} (pod {pod.name}) exited with code {pod.exit_code} "
            f"({meaning}); its last lines:\n{tail}")


@contextmanager
def _sigterm_cancels() -> Iterator[None]:
    """Turn SIGTERM into :class:`Cancelled` while waiting (signals can only be handled in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum, frame):
        raise Cancelled("the training step was cancelled (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(out: TextIO, text: str) -> None:
    out.write(f"[launcher] {text}\n")
    out.flush()


def require_cluster_store(config: TrainConfig, launcher: str) -> None:
    """Cluster pods read data and write checkpoints through Azure Blob; a local path is on another machine."""
    if urlparse(config.store_uri).scheme != "https":
        raise TrainingError(f"expected an Azure Blob store URI (https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX) for the "
                            f"{launcher} launcher: its pods cannot read {config.store_uri!r} on this machine")


def run_pytorchjob(config: TrainConfig, run_id: str, timeout_s: float, backoff_limit: int,
                   settings: PyTorchJobSettings | None = None, client: JobClient | None = None, out: TextIO | None = None) -> None:
    """Build the job for ``config`` and run it to the end in this step's namespace."""
    require_cluster_store(config, "pytorchjob")
    settings = settings or PyTorchJobSettings(namespace=current_namespace())
    manifest = build_pytorchjob(config, run_id, settings, int(timeout_s), backoff_limit)
    launch_job(manifest, client or KubernetesJobClient(settings.namespace), timeout_s, out)
