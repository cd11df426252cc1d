"""More than one server process per pod: a supervising parent and ``--workers`` children.

One Python process serves HTTP and JSON on one core at most (the GIL), so a pod with a CPU limit of N
runs N processes by default (``--workers auto``). KServe's own multi-process mode re-imports its app in
fresh processes, without this server's routes, hardening and batcher; here each child is this same
program (``python -m serving`` with the parent's arguments), so it loads the model, verifies it, and
runs its own batcher and its own collector. The parent loads nothing; it:

- binds one listening socket per child on the HTTP port, with ``SO_REUSEPORT``: the kernel spreads new
  connections over the sockets of the children that listen. One shared socket would be simpler, but
  every idle child's event loop wakes for a new connection and the first one accepts all that are queued,
  so a burst of connections lands in one process;
- starts the children and lets them serve only once every one has loaded its model: a child's socket
  listens only from then on, so the port answers (and reports ready) once all children are ready;
- passes SIGTERM and SIGINT on to the children, each of which drains (uvicorn finishes the requests in
  flight, the model's ``stop`` flushes its collector), and exits 0 when they all did;
- exits non-zero as soon as a child dies on its own, after stopping the others: Kubernetes restarts the
  pod rather than running it with less capacity than it was sized for.

Prometheus metrics are kept per child in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess
mode; KServe 0.21 sets none up for its own workers, so there each scrape sees one process's numbers),
and ``/metrics`` answers the sum over all children from whichever child the scrape reaches.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from kserve.logging import KSERVE_LOGGER_NAME
from prometheus_client import REGISTRY, CollectorRegistry, exposition, multiprocess
from starlette.requests import Request
from starlette.responses import Response

logger = logging.getLogger(f"{KSERVE_LOGGER_NAME}.workers")
WORKER_ENV = "SERVING_WORKER"  # in a child: "INDEX/COUNT"
SOCKET_ENV = "SERVING_LISTEN_FD"  # the child's listening socket
READY_ENV = "SERVING_READY_FD"  # the child writes one byte here once its model is loaded
GO_ENV = "SERVING_GO_FD"  # end of file here: every child is loaded, serve
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
READY_TIMEOUT_S = 600.0  # a model version from Blob can take minutes to download and verify
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerPlan:
    """How many processes serve, and the threads each one runs."""

    workers: int
    cpu_limit: int

    @property
    def torch_threads(self) -> int:
        """Compute threads per forward pass: the process's share of the CPUs, less one for its event loop,
        which is busy for about as long as the model on a small one. More threads than cores makes
        OpenMP spin against the event loop (and the other processes): tail latency explodes."""
        return max(1, self.cpu_limit // self.workers - 1)

    @property
    def decode_threads(self) -> int:
        """Image-decoding threads per process: its share of the CPUs (PIL releases the GIL)."""
        return max(1, self.cpu_limit // self.workers)

    @property
    def asyncio_threads(self) -> int:
        """KServe's default pool per process (KServe's own formula, on the process's share)."""
        return min(32, self.cpu_limit // self.workers + 4)


def parse_workers(text: str, cpus: int) -> int:
    """``auto`` (one process per CPU of the pod's limit) or a positive count."""
    if text == "auto":
        return cpus
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected --workers auto or a positive number of processes, got {text!r}")
    return int(text)


def worker_index() -> str:
    """This process's index among the workers ("0" where it serves alone): a Prometheus label."""
    return os.environ.get(WORKER_ENV, "0/1").split("/")[0]


def is_worker() -> bool:
    return WORKER_ENV in os.environ


# -- the parent ----------------------------------------------------------------------------------------


def supervise(argv: list[str], workers: int, host: str, port: int) -> int:
    """Start ``workers`` children serving ``argv`` on ``host:port``; return the exit code for the parent."""
    sockets = [reuse_port_socket(host, port)]
    port = sockets[0].getsockname()[1]  # port 0: the one the kernel picked, for every child
    sockets += [reuse_port_socket(host, port) for _ in range(workers - 1)]
    own_dir = MULTIPROC_ENV not in os.environ
    metrics_dir = tempfile.mkdtemp(prefix="serving-metrics-") if own_dir else os.environ[MULTIPROC_ENV]
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        children = [_spawn(argv, i, workers, sockets[i], ready_w, go_r, metrics_dir) for i in range(workers)]
    finally:
        for s in sockets:  # the children hold them now: a dead child's socket must stop taking connections
            s.close()
        os.close(ready_w)
        os.close(go_r)
    logger.info("serving on %s:%d with %d processes %s (metrics in %s)", host, port, workers, [c.pid for c in children], metrics_dir)
    try:
        return _run(children, ready_r, go_w)
    finally:
        os.close(ready_r)
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket in the port's ``SO_REUSEPORT`` group; it joins the group's load spreading when its
    child listens on it (uvicorn calls ``listen``)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _spawn(argv: list[str], index: int, workers: int, sock: socket.socket, ready_w: int, go_r: int, metrics_dir: str) -> subprocess.Popen:
    env = {**os.environ, WORKER_ENV: f"{index}/{workers}", SOCKET_ENV: str(sock.fileno()), READY_ENV: str(ready_w),
           GO_ENV: str(go_r), MULTIPROC_ENV: metrics_dir}
    # A session of its own: a terminal's Ctrl-C reaches the parent only, which passes it on once.
    return subprocess.Popen([sys.executable, "-m", "serving", *argv], env=env, pass_fds=(sock.fileno(), ready_w, go_r),
                            start_new_session=True)


def _run(children: list[subprocess.Popen], ready_r: int, go_w: int) -> int:
    """Release the children once all are loaded; then wait. SIGTERM/SIGINT stop them all."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(children, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    failure = _wait_loaded(children, ready_r)
    if failure is not None:
        os.close(go_w)
        if stopping:  # told to stop while loading: the children were stopped, nothing failed
            _stop_all(children, "stopped before every process had loaded the model")
            return 0
        return _stop_all(children, failure)
    os.close(go_w)  # end of file on the go pipe: every child starts serving
    logger.info("all %d processes loaded the model: serving", len(children))
    while True:
        pid, status = _wait_any()
        child = next((c for c in children if c.pid == pid), None)
        if child is None:
            continue
        child.returncode = os.waitstatus_to_exitcode(status)
        if not stopping:
            return _stop_all(children, f"process {pid} exited with code {child.returncode}")
        if all(c.returncode is not None for c in children):
            return 0 if all(c.returncode == 0 for c in children) else 1


def _wait_loaded(children: list[subprocess.Popen], ready_r: int) -> str | None:
    """None once every child has written its byte; why not, as soon as one exits first or after
    :data:`READY_TIMEOUT_S`."""
    loaded, deadline = 0, time.monotonic() + READY_TIMEOUT_S
    while loaded < len(children):
        readable, _, _ = select.select([ready_r], [], [], 0.5)
        if readable:
            loaded += len(os.read(ready_r, len(children)))
        if any(c.poll() is not None for c in children):
            return "a process exited before every process had loaded the model"
        if time.monotonic() > deadline:
            return f"expected every process to load the model within {READY_TIMEOUT_S:.0f} s, {loaded} of {len(children)} did"
    return None


def _wait_any() -> tuple[int, int]:
    try:
        return os.wait()
    except ChildProcessError:  # none left (they were all reaped already)
        return 0, 0


def _stop_all(children: list[subprocess.Popen], why: str) -> int:
    """Stop every child still running; the parent's non-zero exit code (the failed child's, else 1)."""
    logger.error("stopping the server: %s", why)
    _signal_all(children, signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    failed = [c.returncode for c in children if c.returncode not in (0, None)]
    return next((code for code in failed if code > 0), 1)


def _signal_all(children: list[subprocess.Popen], signum: int) -> None:
    for child in children:
        if child.returncode is None:
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:  # exited; reaped by the wait loop
                pass


# -- a child ---------------------------------------------------------------------------------------------


def worker_sockets() -> list[socket.socket]:
    """The listening socket the parent made for this child."""
    return [socket.socket(fileno=int(os.environ[SOCKET_ENV]))]


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies (a SIGKILLed parent cannot pass anything on)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's own signal handling still applies
        return


def wait_for_siblings() -> None:
    """Report this child loaded, then block until every child is (the parent closes the go pipe)."""
    ready, go = int(os.environ[READY_ENV]), int(os.environ[GO_ENV])
    os.write(ready, b"1")
    os.close(ready)
    while os.read(go, 1):
        pass
    os.close(go)


# -- metrics ------------------------------------------------------------------------------------------------


async def metrics_handler(request: Request) -> Response:
    """``GET /metrics``: every process's metrics summed in multiprocess mode, else this process's (as KServe)."""
    registry = REGISTRY
    if MULTIPROC_ENV in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    encoder, content_type = exposition.choose_encoder(request.headers.get("accept"))
    return Response(content=encoder(registry), headers={"content-type": content_type})
