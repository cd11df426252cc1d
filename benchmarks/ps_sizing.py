"""Sizing the parameter servers on paper: a model of one synchronous PS step, checked on this machine.

    python -m benchmarks.ps_sizing [--steps 10] [--warmup 3] [--threads 1] [--no-check]
                                   [--gbps 25] [--resnet18-ms 25.6] [--resnet50-ms 51.2]

Prints (a) the model against the project's real CPU training (the engine's shards, RPC functions and
:class:`RemoteParameters`, spawned as :mod:`benchmarks.train_throughput` does it, but with P shards) at the
sizes this machine can run, predicted vs measured step time; (b) the sizing table: for ResNet-18 and
ResNet-50 at ``--gbps`` NICs, how many shards keep 8, 32 and 128 GPU workers from waiting on the PS.

**What a step is here** (components/training/worker.py, server.py). A worker runs forward and backward to
the end, then :meth:`RemoteParameters.push_pull` sends one gradient tensor to every shard at once and
blocks until each shard answers with its new parameters; a sync shard answers only after the last of the N
gradients has arrived, been summed and applied. The next forward needs those parameters. Nothing overlaps:

    step = compute + push + update + pull

with, for one step, B_w and B_ps the NIC bandwidth of a worker node and of a PS node (each direction,
full duplex, one shard per node), S the values of the busiest shard, b the bytes per value, L a latency:

    push = pull = max(params·b / B_w,  N·S·b / B_ps) + L       (worker NIC vs busiest PS NIC)
    update = S · (N · t_sum + t_apply)                         (the shard sums N gradients, then one optimizer step)

``overlapped=True`` gives ``max(compute, comm)`` instead: what a design that pushes layer by layer during
backward would reach; this project's code does not, so the tables use the serial form. The smallest P that
keeps workers from waiting on the PS is the first P at which the busiest shard's NIC is no slower than a
worker's own NIC in each phase (N·S ≤ params·B_ps/B_w): from there on a step's network time is the worker
NIC floor, which no number of shards can shorten. With an even split S = params/P, so P = ⌈N·B_w/B_ps⌉; this
code's :class:`ShardLayout` gives whole tensors to shards, so S is never below the largest tensor and P is
at most the number of tensors: both are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.distributed.rpc as rpc
from torch import nn
from torch.nn import functional as F

from benchmarks.train_throughput import Setup, _ps_config, _spawn, parameter_bytes, synthetic, threads_per_worker, timed_steps
from components.nets import build_model
from components.store import open_store
from components.training import server
from components.training.rank import rpc_options
from components.training.sharding import ShardLayout, flatten
from components.training.worker import RemoteParameters, ps_name, worker_name

GBIT = 1e9 / 8  # bytes per second in one Gbit/s
FP32, BF16 = 4, 2  # bytes per value on the wire
REL_TOL = 1e-9  # "no slower than": equal times count as meeting the bound


# ---------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Network:
    """Per-node NIC bandwidth, bytes/s in each direction (full duplex), and a per-phase message latency."""

    worker_bytes_per_s: float
    ps_bytes_per_s: float
    latency_s: float = 0.0

    @classmethod
    def gbps(cls, worker: float, ps: float | None = None, latency_s: float = 0.0) -> Network:
        return cls(worker * GBIT, (worker if ps is None else ps) * GBIT, latency_s)


@dataclass(frozen=True)
class UpdateCost:
    """A shard's CPU work per step, in seconds per parameter value: summing one worker's gradient, applying one step."""

    sum_s_per_value: float = 0.0
    apply_s_per_value: float = 0.0

    def seconds(self, shard_values: float, workers: int) -> float:
        return shard_values * (workers * self.sum_s_per_value + self.apply_s_per_value)


FREE_UPDATE = UpdateCost()


@dataclass(frozen=True)
class Step:
    """One synchronous step as the model sees it (seconds)."""

    compute_s: float
    push_s: float
    update_s: float
    pull_s: float
    worker_nic_s: float  # each way
    ps_nic_s: float  # each way, the busiest shard
    overlapped: bool = False

    @property
    def comm_s(self) -> float:
        return self.push_s + self.update_s + self.pull_s

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.comm_s) if self.overlapped else self.compute_s + self.comm_s

    @property
    def busy(self) -> float:
        """The share of a step the worker's accelerator computes."""
        return self.compute_s / self.seconds

    @property
    def bottleneck(self) -> str:
        return "PS NIC" if ps_bound(self.ps_nic_s, self.worker_nic_s) else "worker NIC"


def even_shards(values: float, shards: int) -> list[float]:
    """An ideal split: every shard holds ``values / shards`` (tensors cut wherever needed)."""
    if shards < 1:
        raise ValueError(f"expected at least 1 shard, got {shards}")
    return [values / shards] * shards


def layout_shards(model: nn.Module, shards: int) -> list[int]:
    """Values per shard as this project splits ``model``: whole tensors, size-balanced (:class:`ShardLayout`)."""
    return ShardLayout.balanced(model, shards).sizes(model)


def worker_nic_seconds(values: float, bytes_per_value: int, net: Network) -> float:
    """One direction at one worker: every gradient value out (push) or every parameter in (pull)."""
    return values * bytes_per_value / net.worker_bytes_per_s


def ps_nic_seconds(shard_values: Sequence[float], workers: int, bytes_per_value: int, net: Network) -> float:
    """One direction at the busiest shard: N gradients of its slice in (push), N copies out (pull)."""
    return workers * max(shard_values) * bytes_per_value / net.ps_bytes_per_s


def ps_bound(ps_s: float, worker_s: float) -> bool:
    return ps_s > worker_s * (1 + REL_TOL)


def step_time(compute_s: float, shard_values: Sequence[float], workers: int, net: Network, bytes_per_value: int = FP32,
              update: UpdateCost = FREE_UPDATE, overlapped: bool = False) -> Step:
    """The model of one step: ``compute + push + update + pull`` (``max(compute, comm)`` when ``overlapped``)."""
    if workers < 1:
        raise ValueError(f"expected at least 1 worker, got {workers}")
    worker_s = worker_nic_seconds(sum(shard_values), bytes_per_value, net)
    ps_s = ps_nic_seconds(shard_values, workers, bytes_per_value, net)
    phase = max(worker_s, ps_s) + net.latency_s
    return Step(compute_s, phase, update.seconds(max(shard_values), workers), phase, worker_s, ps_s, overlapped)


def smallest_shards(shards_for: Callable[[int], Sequence[float]], workers: int, net: Network, max_shards: int,
                    bytes_per_value: int = FP32) -> int | None:
    """The smallest P in 1..``max_shards`` whose busiest shard's NIC is no slower than a worker's; None if none is."""
    for shards in range(1, max_shards + 1):
        sizes = shards_for(shards)
        if not ps_bound(ps_nic_seconds(sizes, workers, bytes_per_value, net), worker_nic_seconds(sum(sizes), bytes_per_value, net)):
            return shards
    return None


def even_split_shards(workers: int, net: Network) -> int:
    """The closed form of :func:`smallest_shards` for an even split: ⌈N·B_w/B_ps⌉."""
    return max(1, math.ceil(workers * net.worker_bytes_per_s / net.ps_bytes_per_s * (1 - REL_TOL)))


# ------------------------------------------------------------------------------ (a) the check on this machine


@dataclass(frozen=True)
class Sharded(Setup):
    """A row of :mod:`benchmarks.train_throughput` with P parameter-server shards."""

    shards: int = 1


@dataclass(frozen=True)
class Measured:
    """One PS run of the real engine: per-worker step time, and the share of it in push-pull."""

    step_s: float
    comm_fraction: float


def _echo(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _echo_rank(rank: int, setup: Setup, port: int, queue) -> None:
    """Rank 1 sends a tensor to rank 0 and gets it back: one push and one pull's worth of bytes and messages."""
    warnings.filterwarnings("ignore", message=".*ProcessGroupGloo.*as a ProcessGroup.*")
    torch.set_num_threads(1)
    rpc.init_rpc(f"echo{rank}", rank=rank, world_size=2, rpc_backend_options=rpc_options(f"tcp://127.0.0.1:{port}", 300, 1))
    if rank == 1:
        def best(tensor: torch.Tensor, repeats: int) -> float:
            times = []
            for _ in range(repeats + 2):
                started = time.perf_counter()
                rpc.rpc_sync("echo0", _echo, args=(tensor,))
                times.append(time.perf_counter() - started)
            return sorted(times[2:])[len(times[2:]) // 2]  # the median after two warm-up calls

        small = best(torch.zeros(1), 30)
        payload = torch.randn(parameter_bytes(setup) // 4)
        queue.put((small, best(payload, setup.steps), payload.numel() * 4))
    rpc.shutdown()


def measure_loopback(setup: Setup) -> tuple[float, float]:
    """Loopback through the engine's RPC settings: (latency per one-way message, bytes/s one way) at the model's size."""
    [(small, large, nbytes)] = _spawn(_echo_rank, replace(setup, workers=1), 2)
    return small / 2, 2 * nbytes / max(large - small, 1e-9)


def measure_compute(setup: Setup) -> float:
    """Forward and backward alone, one worker's batch and threads: seconds per step."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(setup))
    try:
        torch.manual_seed(0)
        model = build_model(setup.arch, setup.channels, setup.classes)
        x, y = synthetic(setup, setup.batch, torch.device("cpu"))

        def step() -> None:
            model.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()

        return timed_steps(setup, step, torch.device("cpu")) / setup.steps
    finally:
        torch.set_num_threads(before)


def measure_update(values: int, workers: int, repeats: int = 5) -> float:
    """The engine's sync shard (Adam) taking N gradients of ``values`` and applying them, one thread: seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shard = server.make_shard(torch.zeros(values), _ps_config(workers), total_steps=10**6, warmup_steps=1)
        grads = [torch.randn(values) for _ in range(workers)]  # one each: summing one tensor N times would stay in cache
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            for worker, grad in enumerate(grads):
                shard.push_pull(worker, grad, shard.step)
            times.append(time.perf_counter() - started)
        return sorted(times[1:])[len(times[1:]) // 2]
    finally:
        torch.set_num_threads(before)


def fit_update_cost(values: int = 2_359_296, workers: int = 8) -> UpdateCost:
    """Seconds per value for summing and for applying, from the engine's shard with 1 and ``workers`` workers."""
    one, many = measure_update(values, 1), measure_update(values, workers)
    per_sum = max(many - one, 0.0) / (workers - 1) / values
    return UpdateCost(per_sum, max(one / values - per_sum, 0.0))


def _sharded_rank(rank: int, setup: Sharded, port: int, queue) -> None:
    """One rank of a PS run with ``setup.shards`` shards: ranks 0..P-1 serve, the others are workers."""
    warnings.filterwarnings("ignore", message=".*ProcessGroupGloo.*as a ProcessGroup.*")
    config = replace(_ps_config(setup.workers), num_ps=setup.shards)
    torch.manual_seed(0)
    model = build_model(setup.arch, setup.channels, setup.classes)
    layout = ShardLayout.balanced(model, setup.shards)
    serving = rank < setup.shards
    with tempfile.TemporaryDirectory() as scratch:  # a store for the shard's checkpoints: none is written here
        if serving:
            torch.set_num_threads(1)
            shard = server.make_shard(flatten(layout.groups(model)[rank]), config, total_steps=10**6, warmup_steps=1)
            server.install_shard(shard, rank, config, open_store(scratch))
        else:
            torch.set_num_threads(threads_per_worker(setup))
        name = ps_name(rank) if serving else worker_name(rank - setup.shards)
        rpc.init_rpc(name, rank=rank, world_size=setup.workers + setup.shards,
                     rpc_backend_options=rpc_options(f"tcp://127.0.0.1:{port}", 300, setup.workers))
        if serving:
            with contextlib.redirect_stdout(io.StringIO()):  # the shard's summary line would break up the table
                server.serve()
        else:
            queue.put(_sharded_worker(setup, model, layout, rank - setup.shards))
        rpc.shutdown()


def _sharded_worker(setup: Sharded, model: nn.Module, layout: ShardLayout, worker: int) -> tuple[int, float, float]:
    """The worker loop of ``train_throughput._ps_worker`` with P shards: (worker, seconds, comm+wait share)."""
    remote = RemoteParameters(model, layout, worker)
    remote.pull()
    x, y = synthetic(setup, setup.batch, torch.device("cpu"))

    def step() -> None:
        model.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        remote.push_pull()

    for _ in range(setup.warmup):
        step()
    comm = remote.comm_seconds
    seconds = timed_steps(replace(setup, warmup=0), step, torch.device("cpu"))
    remote.finish()
    return worker, seconds, (remote.comm_seconds - comm) / seconds


def measure_step(setup: Sharded) -> Measured:
    """The real engine, P shards and N workers as spawned processes on this machine (sync mode, Adam)."""
    results = _spawn(_sharded_rank, setup, setup.workers + setup.shards)
    return Measured(sum(r[1] for r in results) / len(results) / setup.steps, sum(r[2] for r in results) / len(results))


@dataclass(frozen=True)
class CheckRow:
    label: str
    workers: int
    shards: int
    bytes_per_step: int  # one direction, one worker
    bandwidth: float
    latency_s: float
    predicted: Step
    measured: Measured


def check(steps: int, warmup: int, threads: int) -> list[CheckRow]:
    """Predict, then measure, a few (model, N, P) on this machine; every model input is measured separately."""
    models = [("small_cnn 1x28x28, batch 32", Sharded("small_cnn", 1, 28, 10, 32, 1, "cpu", steps * 3, warmup, threads)),
              ("resnet18 3x32x32, batch 8", Sharded("resnet18", 3, 32, 10, 8, 1, "cpu", steps, warmup, threads))]
    rows = []
    for label, base in models:
        latency, bandwidth = measure_loopback(base)
        net = Network(bandwidth, bandwidth, latency)
        model = build_model(base.arch, base.channels, base.classes)
        for workers, shards in [(1, 1), (2, 1), (2, 2)]:
            setup = replace(base, workers=workers, shards=shards, threads=threads * workers)
            sizes = layout_shards(model, shards)
            update = measure_update(max(sizes), workers)
            compute = measure_compute(setup)
            predicted = step_time(compute, sizes, workers, net, FP32, UpdateCost(update / max(sizes) / workers))
            rows.append(CheckRow(label, workers, shards, sum(sizes) * FP32, bandwidth, latency, predicted, measure_step(setup)))
    return rows


def check_table(rows: list[CheckRow], threads: int) -> str:
    lines = [f"(a) the model vs the real engine on this machine (loopback RPC, {threads} thread(s) per worker, 1 per shard; "
             "sync, Adam; compute, loopback and update measured separately, then the PS run)",
             "| model | N | P | bytes each way | loopback | compute | predicted comm | predicted step | measured step "
             "| measured comm+wait | measured / predicted |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p, m = r.predicted, r.measured
        lines.append(f"| {r.label} | {r.workers} | {r.shards} | {r.bytes_per_step:,} | {r.bandwidth / 1e9:.2f} GB/s, "
                     f"{r.latency_s * 1e3:.2f} ms | {p.compute_s * 1e3:.1f} ms | {p.comm_s * 1e3:.1f} ms | {p.seconds * 1e3:.1f} ms "
                     f"| {m.step_s * 1e3:.1f} ms | {m.comm_fraction * m.step_s * 1e3:.1f} ms | {m.step_s / p.seconds:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ (b) the sizing


@dataclass(frozen=True)
class Workload:
    """A model to size: its tensors (for this code's layout), and the assumed GPU compute per step."""

    name: str
    model: nn.Module
    compute_s: float
    source: str

    @property
    def values(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def tensors(self) -> int:
        return len(list(self.model.parameters()))

    @property
    def largest(self) -> int:
        return max(p.numel() for p in self.model.parameters())


@dataclass(frozen=True)
class SizingRow:
    workload: str
    bytes_per_value: int
    workers: int
    worker_nic_s: float
    even_shards: int
    even_step: Step
    even_overlapped: Step
    layout_shards: int | None
    layout_best: tuple[int, Step]  # this code's layout: the P with the shortest step (the first such), and that step


def size(workload: Workload, workers: int, net: Network, bytes_per_value: int, update: UpdateCost) -> SizingRow:
    values = workload.values
    even = even_split_shards(workers, net)
    even_step = step_time(workload.compute_s, even_shards(values, even), workers, net, bytes_per_value, update)
    overlapped = replace(even_step, overlapped=True)
    sizes = {p: layout_shards(workload.model, p) for p in range(1, workload.tensors + 1)}
    found = smallest_shards(sizes.__getitem__, workers, net, workload.tensors, bytes_per_value)
    steps = {p: step_time(workload.compute_s, s, workers, net, bytes_per_value, update) for p, s in sizes.items()}
    best = min(steps, key=lambda p: (round(steps[p].seconds, 9), p))
    at = found if found is not None else best
    return SizingRow(workload.name, bytes_per_value, workers, worker_nic_seconds(values, bytes_per_value, net), even, even_step,
                     overlapped, found, (at, steps[at]))


def workloads(resnet18_ms: float, resnet50_ms: float) -> list[Workload]:
    import torchvision

    return [Workload("ResNet-18", torchvision.models.resnet18(weights=None), resnet18_ms / 1e3,
                     "assumed ~10,000 img/s: ~2x ResNet-50's rate (2.3x fewer FLOPs)"),
            Workload("ResNet-50", torchvision.models.resnet50(weights=None), resnet50_ms / 1e3,
                     "assumed ~5,000 img/s: 2x NVIDIA's published 2,470 img/s on one A100-80GB with AMP "
                     "(DeepLearningExamples, PyTorch resnet50v1.5)")]


def sizing_table(rows: list[SizingRow], loads: list[Workload], net: Network, update: UpdateCost) -> str:
    gbps = net.worker_bytes_per_s / GBIT
    lines = [f"(b) shards needed so N GPU workers do not wait on the parameter servers: {gbps:g} Gbps NICs on every node "
             f"(line rate, each direction), one shard per CPU node, sync steps, batch 256 per GPU (224x224), serial step "
             f"(compute + push + update + pull) as this code runs it",
             "GPU compute per step, an assumption to replace with the GPU benchmark (one H100, bf16 autocast, batch 256):"]
    lines += [f"  {w.name}: {w.values:,} parameters in {w.tensors} tensors (largest {w.largest / w.values:.1%}), "
              f"{w.compute_s * 1e3:.1f} ms ({w.source})" for w in loads]
    lines += [f"  PS update (sum N gradients, one Adam step) measured here on one core: {update.sum_s_per_value * 1e9:.2f} ns "
              f"per value per worker + {update.apply_s_per_value * 1e9:.2f} ns per value",
              "  bf16 gradients are not implemented (the code sends float32); those rows show what halving the bytes buys",
              "| model | gradients | N | worker NIC each way | P, even split | step at P | GPU busy | step if overlapped "
              "| P, this code's layout (whole tensors) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        at, step = r.layout_best
        layout = (f"{r.layout_shards} (step {step.seconds * 1e3:.0f} ms)" if r.layout_shards is not None
                  else f"none: PS NIC bound; best P={at}, step {step.seconds * 1e3:.0f} ms, busy {step.busy:.0%}")
        lines.append(f"| {r.workload} | {'fp32' if r.bytes_per_value == FP32 else 'bf16'} | {r.workers} | "
                     f"{r.worker_nic_s * 1e3:.1f} ms | {r.even_shards} | {r.even_step.seconds * 1e3:.0f} ms | {r.even_step.busy:.0%} "
                     f"| {r.even_overlapped.seconds * 1e3:.0f} ms | {layout} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="measured steps per check run (the small CNN runs 3x as many)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per check run")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker in the check")
    parser.add_argument("--no-check", action="store_true", help="print only the sizing table")
    parser.add_argument("--gbps", type=float, default=25.0, help="NIC bandwidth of every node in the sizing table")
    parser.add_argument("--resnet18-ms", type=float, default=25.6, help="assumed GPU compute per ResNet-18 step")
    parser.add_argument("--resnet50-ms", type=float, default=51.2, help="assumed GPU compute per ResNet-50 step")
    args = parser.parse_args(argv)
    if not args.no_check:
        print(check_table(check(args.steps, args.warmup, args.threads), args.threads), end="\n\n", flush=True)
    net = Network.gbps(args.gbps)
    update = fit_update_cost()
    loads = workloads(args.resnet18_ms, args.resnet50_ms)
    rows = [size(w, n, net, b, update) for w in loads for b in (FP32, BF16) for n in (8, 32, 128)]
    print(sizing_table(rows, loads, net, update), flush=True)


if __name__ == "__main__":
    from benchmarks.ps_sizing import main as _main  # the spawned ranks and RPC find every function under this name

    _main()
