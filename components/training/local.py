"""The ``local`` launcher: every rank as a process on this machine, supervised like pods.

It sets the same environment the Training Operator gives PyTorchJob pods and streams every rank's
output into its own (prefixed with the rank's name). It behaves like the cluster with restart policy
``ExitCode``: when any rank dies, the others are stopped at once (RPC has a fixed world size), and if
the first rank to die was killed by a signal or exited with a code in 128–255 the whole group is
relaunched, resuming from the latest complete checkpoint, up to ``backoff_limit`` times. An exit code
1–127 is permanent (bad configuration or data) and fails at once. A failure carries the dead rank's
last lines. A job that outlives its timeout is stopped and fails too. Nothing it starts outlives it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from components.errors import TrainingError
from components.training import PROGRESS_TTY_ENV
from components.training.config import TrainConfig, to_argv
from components.training.worker import ps_name, worker_name

TAIL_LINES = 30


@dataclass
class RankProcess:
    name: str
    popen: subprocess.Popen
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None
    exited_at: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_names(config: TrainConfig) -> list[str]:
    return [ps_name(r) for r in range(config.num_ps)] + [worker_name(w) for w in range(config.num_workers)]


@dataclass(frozen=True)
class RankFailure:
    """The rank whose death ended one attempt: the first to exit non-zero."""

    rank: RankProcess
    code: int

    @property
    def retryable(self) -> bool:
        # The Training Operator's ExitCode policy: signals (negative here) and 128–255 are retried.
        return self.code < 0 or self.code >= 128

    def describe(self) -> str:
        return f"{self.rank.name} was killed by signal {-self.code}" if self.code < 0 else f"{self.rank.name} exited with code {self.code}"


def launch_local(config: TrainConfig, timeout_s: float = 3600.0, out: TextIO | None = None, backoff_limit: int = 3,
                 on_start: Callable[[int, dict[str, int]], None] | None = None) -> None:
    """Run the job to completion; raise :class:`TrainingError` if it fails for good or time runs out.

    ``on_start(attempt, {rank name: pid})`` is called as each attempt's processes start (for tests
    and tools that inject faults).
    """
    config.validate()
    if backoff_limit < 0:
        raise ValueError(f"expected backoff_limit >= 0, got {backoff_limit}")
    out = out or sys.stdout
    deadline = time.monotonic() + timeout_s
    for attempt in range(backoff_limit + 1):
        failure = _attempt(config, deadline, out, attempt, on_start)
        if failure is None:
            return
        if not failure.retryable:
            raise TrainingError(_failure_message(failure, ""))
        if attempt == backoff_limit:
            raise TrainingError(_failure_message(failure, f" (backoff limit {backoff_limit} reached)"))
        out.write(f"[launcher] {failure.describe()}; relaunching every rank from the latest checkpoint "
                  f"(restart {attempt + 1} of at most {backoff_limit})\n")
        out.flush()


def _attempt(config: TrainConfig, deadline: float, out: TextIO, attempt: int, on_start) -> RankFailure | None:
    progress = ProgressBar.for_output(out)
    port = free_port()
    ranks = [_start_rank(config, rank, name, port, out, progress) for rank, name in enumerate(rank_names(config))]
    try:
        if on_start:
            on_start(attempt, {r.name: r.popen.pid for r in ranks})
        return _supervise(ranks, deadline)
    finally:
        _stop(ranks)
        if progress:
            progress.close()


def _rank_env(config: TrainConfig, rank: int, port: int) -> dict[str, str]:
    cores = os.cpu_count() or 1
    threads = 1 if rank < config.num_ps else max(1, cores // config.num_workers)
    return {
        **os.environ,
        "RANK": str(rank),
        "WORLD_SIZE": str(config.world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        # Share the cores instead of letting every process claim all of them.
        "TRAIN_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
        "TP_SOCKET_IFNAME": "lo",
        "GLOO_SOCKET_IFNAME": "lo",
    }


def _start_rank(config, rank: int, name: str, port: int, out: TextIO, progress) -> RankProcess:
    popen = subprocess.Popen(
        [sys.executable, "-m", "components.training", *to_argv(config)],
        env=_rank_env(config, rank, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so stopping it stops its children too
    )
    proc = RankProcess(name, popen)
    proc.reader = threading.Thread(target=_pump, args=(proc, out, progress), daemon=True)
    proc.reader.start()
    return proc


def _pump(proc: RankProcess, out: TextIO, progress) -> None:
    for line in proc.popen.stdout:
        line = line.rstrip("\n")
        if line.startswith("@progress "):
            if progress:
                progress.update(line)
            continue
        proc.tail.append(line)
        if progress:
            progress.clear()
        out.write(f"[{proc.name}] {line}\n")
        out.flush()


def _supervise(ranks: list[RankProcess], deadline: float) -> RankFailure | None:
    """Wait until every rank succeeded (``None``) or one failed (the first to die); stop at the deadline."""
    while True:
        codes = [r.popen.poll() for r in ranks]
        for r, c in zip(ranks, codes):
            if c is not None and r.exited_at is None:
                r.exited_at = time.monotonic()
        failed = [(r, c) for r, c in zip(ranks, codes) if c not in (None, 0)]
        if failed:
            rank, code = min(failed, key=lambda rc: _exit_order(rc[0]))
            _stop(ranks)
            return RankFailure(rank, code)
        if all(c == 0 for c in codes):
            for r in ranks:
                r.reader.join(timeout=5)
            return None
        if time.monotonic() > deadline:
            _stop(ranks)
            raise TrainingError(f"training did not finish before its timeout; stopped ranks {[r.name for r in ranks]}")
        time.sleep(0.1)


def _exit_order(rank: RankProcess) -> tuple[float, bool]:
    # The rank that died first is the cause; the others usually fail because it vanished.
    # Within one polling round, a rank killed by a signal is the likelier cause.
    return (rank.exited_at or 0.0, rank.popen.returncode >= 0)


def _failure_message(failure: RankFailure, note: str) -> str:
    if failure.rank.reader:
        failure.rank.reader.join(timeout=2)
    tail = "\n".join(f"  {line}" for line in failure.rank.tail) or "  (no output)"
    return f"training failed: {failure.describe()}{note}; its last lines:\n{tail}"


def _stop(ranks: list[RankProcess], grace_s: float = 5.0) -> None:
    """Terminate every rank still running (SIGTERM, then SIGKILL after ``grace_s``)."""
    for r in ranks:
        if r.popen.poll() is None:
            _signal_group(r.popen, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for r in ranks:
        try:
            r.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(r.popen, signal.SIGKILL)
            r.popen.wait()


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        pass


class ProgressBar:
    """A one-line progress bar on a terminal, drawn from worker 0's ``@progress`` lines."""

    def __init__(self, out: TextIO, width: int = 30, owns_stream: bool = False):
        self.out, self.width, self.shown, self.owns_stream = out, width, False, owns_stream

    @classmethod
    def for_output(cls, out: TextIO) -> ProgressBar | None:
        """A bar on ``out`` when it is a terminal; else on ``/dev/tty`` when the user's command asked for one.

        Under kfp.local a step's stdout is a pipe that is forwarded line by line, so a ``\r`` bar cannot
        travel through it. ``python -m pipelines run`` sets ``KFP_PS_PROGRESS_TTY=1`` when it runs in a
        terminal; the bar is then drawn straight on that terminal while log lines keep using the pipe.
        """
        if out.isatty():
            return cls(out)
        if os.environ.get(PROGRESS_TTY_ENV) != "1":
            return None
        try:
            return cls(open("/dev/tty", "w"), owns_stream=True)  # noqa: SIM115 (closed in close())
        except OSError:  # no controlling terminal (CI, a pod): no bar, the epoch lines remain
            return None

    def update(self, line: str) -> None:
        _, epoch, step, steps, loss = line.split()
        filled = int(self.width * int(step) / int(steps))
        bar = "#" * filled + "." * (self.width - filled)
        self.out.write(f"\r  epoch {epoch} [{bar}] {step}/{steps} loss {loss}")
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.out.write("\r" + " " * (self.width + 50) + "\r")
            self.shown = False

    def close(self) -> None:
        self.clear()
        if self.owns_stream:
            self.out.close()
