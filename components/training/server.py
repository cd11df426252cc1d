"""The parameter-server side: each shard owns a slice of the parameters and its optimizer state.

**Synchronous mode** (``sync``): every worker calls :func:`push_pull` once per step with its gradient
for this shard. When the last of the N workers has arrived the shard averages the gradients (summed
in worker order, so a run is reproducible bit for bit), takes one optimizer step, and answers all N
waiting calls with the new parameters. N workers with batch B therefore take exactly the step one
process would take with batch N·B.

**Asynchronous mode** (``async``): a gradient is applied the moment it arrives, one optimizer step per
gradient, and the caller gets the current parameters back at once. Staleness is defined per shard: the
shard's *version* is the number of updates it has applied; a worker's gradient carries the version of
the parameters it was computed on, and its staleness is ``version_now - version_computed_on``.
The bound: **no gradient with staleness above** ``max_staleness`` **(S) is ever applied**. A staler
gradient is dropped and counted, and its worker simply receives the fresh parameters (and version) and
goes on with its next batch. With N similar workers a gradient is typically N-1 updates old (each other
worker pushed once meanwhile), so the configuration requires S ≥ N-1; S bounds how far a straggler
(a slow GPU, a long pause) can drag the model back, while the fast workers never wait.

Checkpoints (see :mod:`components.training.checkpoint`): worker 0 asks every shard to write its state
for step ``s`` (:func:`save_checkpoint`), then commits. In sync mode no shard can move past ``s`` until
worker 0 pushes again, so the shards are consistent by construction. In async mode every worker first
stops at the same step in :func:`checkpoint_barrier` on shard 0 and waits there until worker 0 has
committed, so the checkpoint holds every shard after exactly ``s`` batches of every worker.

Liveness: a shard that hears from no worker for ``rpc_timeout_s`` after training started, while some
worker has not finished, raises instead of waiting for ever (:func:`serve`). The RPC functions are
module-level and act on this process's one shard, so a call carries only tensors and numbers.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.distributed.rpc as rpc

from components.errors import TrainingError
from components.store import Store, join_key
from components.training import checkpoint
from components.training.config import TrainConfig

Answer = tuple[torch.Tensor, int]  # (parameters, version)


class ParameterShard:
    """One shard's parameters (a single flat tensor), its optimizer, its LR schedule and its version."""

    def __init__(self, flat_init: torch.Tensor, config: TrainConfig, total_steps: int, warmup_steps: int):
        self.param = torch.nn.Parameter(flat_init.detach().clone())
        self.optimizer = make_optimizer(config, [self.param])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(total_steps, warmup_steps))
        self.num_workers = config.num_workers
        self.step = 0  # updates applied: the parameters' version
        self._lock = threading.Lock()

    def pull(self) -> Answer:
        with self._lock:
            return self.param.detach().clone(), self.step

    def push_pull(self, worker: int, grad: torch.Tensor, version: int) -> torch.futures.Future:
        raise NotImplementedError

    def snapshot(self) -> bytes:
        """This shard's whole state as checkpoint bytes, taken under the lock (a consistent cut)."""
        with self._lock:
            return checkpoint.encode({"param": self.param.detach(), "optimizer": self.optimizer.state_dict(),
                                      "scheduler": self.scheduler.state_dict(), "step": self.step, "extra": self._extra_state()})

    def load_state(self, state: dict) -> None:
        if state["param"].shape != self.param.shape:
            raise TrainingError(f"expected a checkpointed shard of {self.param.numel()} values, got {state['param'].numel()}")
        with self._lock, torch.no_grad():
            self.param.copy_(state["param"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self._load_extra_state(state["extra"])

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        pass

    def _check(self, worker: int, grad: torch.Tensor) -> None:
        if grad.shape != self.param.shape:
            raise ValueError(f"expected a gradient of {self.param.numel()} values from worker {worker}, got {grad.numel()}")
        if not 0 <= worker < self.num_workers:
            raise ValueError(f"expected a worker index in 0..{self.num_workers - 1}, got {worker}")

    def _apply(self, grad: torch.Tensor) -> None:
        self.param.grad = grad
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1


class SyncShard(ParameterShard):
    """Waits for all N gradients of a step, applies their mean once, answers everyone."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._grads: list[torch.Tensor | None] = [None] * self.num_workers
        self._answer: torch.futures.Future = torch.futures.Future()

    def push_pull(self, worker: int, grad: torch.Tensor, version: int) -> torch.futures.Future:
        """Add one worker's gradient; the future resolves to the parameters after this step."""
        self._check(worker, grad)
        with self._lock:
            if self._grads[worker] is not None:
                raise ValueError(f"worker {worker} pushed twice for step {self.step + 1}")
            self._grads[worker] = grad
            answer = self._answer
            complete = all(g is not None for g in self._grads)
            if complete:
                total = self._grads[0].clone()
                for g in self._grads[1:]:  # a fixed order: float sums do not depend on arrival order
                    total += g
                self._apply(total / self.num_workers)
                self._grads = [None] * self.num_workers
                self._answer = torch.futures.Future()
                result = (self.param.detach().clone(), self.step)
        if complete:
            answer.set_result(result)  # outside the lock: this sends the N replies
        return answer


class AsyncShard(ParameterShard):
    """Applies each gradient as it arrives unless it is more than ``max_staleness`` updates old."""

    def __init__(self, flat_init: torch.Tensor, config: TrainConfig, total_steps: int, warmup_steps: int):
        super().__init__(flat_init, config, total_steps, warmup_steps)
        self.max_staleness = config.max_staleness
        self.applied = 0
        self.dropped = 0
        self.max_applied_staleness = 0

    def push_pull(self, worker: int, grad: torch.Tensor, version: int) -> torch.futures.Future:
        self._check(worker, grad)
        with self._lock:
            staleness = self.step - version
            if staleness < 0:
                raise ValueError(f"worker {worker} sent a gradient for version {version}, but this shard is at {self.step}")
            if staleness <= self.max_staleness:
                self._apply(grad)
                self.applied += 1
                self.max_applied_staleness = max(self.max_applied_staleness, staleness)
            else:
                self.dropped += 1
            answer = torch.futures.Future()
            answer.set_result((self.param.detach().clone(), self.step))
        return answer

    def _extra_state(self) -> dict:
        return {"applied": self.applied, "dropped": self.dropped, "max_applied_staleness": self.max_applied_staleness}

    def _load_extra_state(self, extra: dict) -> None:
        self.applied, self.dropped = int(extra["applied"]), int(extra["dropped"])
        self.max_applied_staleness = int(extra["max_applied_staleness"])


def make_shard(flat_init: torch.Tensor, config: TrainConfig, total_steps: int, warmup_steps: int) -> ParameterShard:
    kind = AsyncShard if config.mode == "async" else SyncShard
    return kind(flat_init, config, total_steps, warmup_steps)


def make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"expected optimizer sgd, adam or adamw, got {config.optimizer!r}")


def warmup_cosine(total_steps: int, warmup_steps: int):
    """LR multiplier: linear warm-up to 1, then cosine decay towards 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class CheckpointBarrier:
    """Async mode: all workers stop at checkpoint step ``s``; worker 0 goes on (to write it), the rest wait.

    :meth:`arrive` answers worker 0 once all N have arrived, and the others once worker 0 calls
    :meth:`release` after its commit.
    """

    def __init__(self, num_workers: int):
        self.num_workers = num_workers
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._step: int | None = None
        self._arrived: set[int] = set()
        self._coordinator: torch.futures.Future = torch.futures.Future()
        self._others: torch.futures.Future = torch.futures.Future()

    def arrive(self, worker: int, step: int) -> torch.futures.Future:
        with self._lock:
            if self._step is not None and step != self._step:
                raise ValueError(f"expected every worker at checkpoint step {self._step}, worker {worker} arrived at {step}")
            self._step = step
            self._arrived.add(worker)
            mine = self._coordinator if worker == 0 else self._others
            everyone = len(self._arrived) == self.num_workers
            coordinator = self._coordinator
        if everyone:
            coordinator.set_result(step)
        return mine

    def release(self, step: int) -> None:
        with self._lock:
            if self._step != step or len(self._arrived) != self.num_workers:
                raise ValueError(f"expected all {self.num_workers} workers at checkpoint step {step}, found {sorted(self._arrived)} at {self._step}")
            others = self._others
            self._reset()
        others.set_result(step)


@dataclass
class Served:
    """What this process serves, and what it has heard from the workers."""

    shard: ParameterShard
    index: int
    config: TrainConfig
    store: Store  # where this shard writes its checkpoint parts, opened once for the process
    barrier: CheckpointBarrier
    finished: set[int] = field(default_factory=set)
    last_call: float | None = None


_served: Served | None = None


def install_shard(shard: ParameterShard, index: int, config: TrainConfig, store: Store) -> None:
    """Make ``shard`` the one this process serves, checkpointing into ``store`` (call before ``rpc.init_rpc``)."""
    global _served
    _served = Served(shard, index, config, store, CheckpointBarrier(config.num_workers))


def _current() -> Served:
    if _served is None:
        raise RuntimeError("this process serves no parameter shard")
    _served.last_call = time.monotonic()
    return _served


def pull() -> Answer:
    return _current().shard.pull()


@rpc.functions.async_execution
def push_pull(worker: int, grad: torch.Tensor, version: int) -> torch.futures.Future:
    return _current().shard.push_pull(worker, grad, version)


def save_checkpoint(step: int, expected_version: int | None) -> str:
    """Write this shard's part of checkpoint ``step``; return its SHA-256."""
    served = _current()
    data = served.shard.snapshot()
    if expected_version is not None and served.shard.step != expected_version:
        raise TrainingError(f"ps{served.index}: expected to be at update {expected_version} for checkpoint {step}, found {served.shard.step}")
    served.store.write_bytes(join_key(checkpoint.folder(served.config.checkpoint_key, step), checkpoint.shard_file(served.index)), data)
    return checkpoint.sha256(data)


@rpc.functions.async_execution
def checkpoint_barrier(worker: int, step: int) -> torch.futures.Future:
    return _current().barrier.arrive(worker, step)


def release_barrier(step: int) -> None:
    _current().barrier.release(step)


def finish(worker: int) -> None:
    """A worker is done: when all are, :func:`serve` returns."""
    _current().finished.add(worker)


def summary(served: Served) -> str:
    shard = served.shard
    text = f"ps{served.index}: {shard.param.numel()} parameters, {shard.step} updates"
    if isinstance(shard, AsyncShard):
        text += f", {shard.dropped} stale gradients dropped, max applied staleness {shard.max_applied_staleness} (bound {shard.max_staleness})"
    return text


def serve(poll_s: float = 0.2) -> None:
    """Block until every worker has finished; raise if the workers go silent for ``rpc_timeout_s``."""
    served = _served
    if served is None:
        raise RuntimeError("this process serves no parameter shard")
    timeout = served.config.rpc_timeout_s
    while len(served.finished) < served.config.num_workers:
        time.sleep(poll_s)
        silent = time.monotonic() - served.last_call if served.last_call is not None else 0.0
        if silent > timeout:
            waiting = sorted(set(range(served.config.num_workers)) - served.finished)
            # TimeoutError, not TrainingError: a hang is worth a restart (see rank.exit_code).
            raise TimeoutError(f"ps{served.index}: no worker has called for {silent:.0f} s (rpc_timeout_s {timeout:g}); "
                                f"workers {waiting} have not finished: one is gone or hung")
    print(summary(served), flush=True)
