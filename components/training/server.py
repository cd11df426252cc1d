"""The parameter-server side: each shard owns a slice of the parameters and its optimizer state.

Synchronous mode: every worker calls :func:`push_pull` once per step with its gradient for this
shard. The shard adds them up; when the last of the N workers has arrived it averages them, takes
one optimizer step, and answers all N waiting calls with the new parameters. N workers with batch B
therefore take exactly the step one process would take with batch N·B.

The RPC functions are module-level and act on this process's one shard, so a call carries only a
tensor, never a reference to a remote object.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.distributed.rpc as rpc

from components.training.config import TrainConfig

_shard: ParameterShard | None = None


class ParameterShard:
    """One shard's parameters (a single flat tensor), its optimizer and its LR schedule."""

    def __init__(self, flat_init: torch.Tensor, config: TrainConfig, total_steps: int, warmup_steps: int):
        self.param = torch.nn.Parameter(flat_init.detach().clone())
        self.optimizer = make_optimizer(config, [self.param])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(total_steps, warmup_steps))
        self.num_workers = config.num_workers
        self.step = 0
        self._lock = threading.Lock()
        self._grad_sum = torch.zeros_like(self.param)
        self._arrived = 0
        self._answer: torch.futures.Future = torch.futures.Future()

    def pull(self) -> torch.Tensor:
        with self._lock:
            return self.param.detach().clone()

    def push_pull(self, grad: torch.Tensor) -> torch.futures.Future:
        """Add one worker's gradient; the future resolves to the parameters after this step."""
        with self._lock:
            if grad.shape != self.param.shape:
                raise ValueError(f"expected a gradient of {self.param.numel()} values, got {grad.numel()}")
            self._grad_sum += grad
            self._arrived += 1
            answer = self._answer
            if self._arrived == self.num_workers:
                self._apply(self._grad_sum / self.num_workers)
                self._grad_sum.zero_()
                self._arrived = 0
                self._answer = torch.futures.Future()
                answer.set_result(self.param.detach().clone())
        return answer

    def _apply(self, grad: torch.Tensor) -> None:
        self.param.grad = grad
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1


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


def install_shard(shard: ParameterShard) -> None:
    """Make ``shard`` the one this process serves (call before ``rpc.init_rpc``)."""
    global _shard
    _shard = shard


def pull() -> torch.Tensor:
    return _served().pull()


@rpc.functions.async_execution
def push_pull(grad: torch.Tensor) -> torch.futures.Future:
    return _served().push_pull(grad)


def _served() -> ParameterShard:
    if _shard is None:
        raise RuntimeError("this process serves no parameter shard")
    return _shard
