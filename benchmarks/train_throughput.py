"""Training throughput: one plain process vs the parameter server (1 and N workers) vs DistributedDataParallel.

    python -m benchmarks.train_throughput [--workers 2] [--steps 30] [--warmup 5] [--threads T] [--repeats 2]

Prints one table from one run on one machine. Every row trains the same network with the same
global batch (N × the per-worker batch) on fixed synthetic batches, so only the training step is
timed: forward, backward, and the update (with its communication):

- (a) one plain process: the global batch, a local Adam step, all the cores;
- (b) the parameter server with 1 worker taking the global batch;
- (c) the parameter server with N workers, each taking 1/N of it (sync mode);
- (d) DistributedDataParallel with N workers (gloo on CPU, nccl on GPUs).

The PS rows use the engine's own pieces (shards, RPC functions, :class:`RemoteParameters`). Every row
gets the same CPU thread budget T (default: all cores): the plain process and a single worker use T
threads, each of N workers T/N, a server one (as the local launcher splits them). On a machine shared
with other jobs, intra-op threads collapse when a core is taken away: ``--threads 1`` keeps the
comparison fair there. Each row is run ``--repeats`` times and its best run reported. "comm+wait" is
the share of a worker's step spent in push-pull (sending, waiting for the slowest worker and the
update, receiving); bytes/step is the tensor payload a worker sends and receives, against twice the
parameter bytes (one gradient up, one parameter copy down). The small CNN always runs on the CPU;
ResNet-18 on 32×32 RGB runs on GPUs when CUDA is present (N = the number of GPUs: one per worker).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.distributed.rpc as rpc
import torch.multiprocessing as mp
from torch.nn import functional as F

from components.nets import build_model
from components.store import open_store
from components.training import server
from components.training.config import TrainConfig
from components.training.rank import rpc_options
from components.training.sharding import ShardLayout, flatten
from components.training.worker import RemoteParameters, ps_name, worker_name


@dataclass(frozen=True)
class Setup:
    """One model on one kind of device, measured for ``steps`` steps after ``warmup``."""

    arch: str
    channels: int
    size: int
    classes: int
    batch: int  # per worker
    workers: int
    device: str
    steps: int
    warmup: int
    threads: int  # CPU threads for the whole row

    @property
    def global_batch(self) -> int:
        return self.batch * self.workers


@dataclass(frozen=True)
class Row:
    label: str
    workers: int
    batch: int
    samples_per_s: float
    comm_fraction: float | None = None
    bytes_per_step: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_for(setup: Setup, worker: int) -> torch.device:
    if setup.device != "cuda":
        return torch.device("cpu")
    torch.cuda.set_device(worker)
    return torch.device("cuda", worker)


def synthetic(setup: Setup, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, setup.channels, setup.size, setup.size, generator=generator)
    return x.to(device), torch.randint(0, setup.classes, (batch,), generator=generator).to(device)



def training_step(model, optimizer, x, y):
    """One optimizer step on a fixed batch: the same work in the plain-process and DDP rows."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step

def threads_per_worker(setup: Setup) -> int:
    return max(1, setup.threads // setup.workers)


def timed_steps(setup: Setup, step, device: torch.device) -> float:
    """Run ``warmup`` then ``steps`` calls of ``step()``; return the seconds of the measured ones."""
    for _ in range(setup.warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(setup.steps):
        step()
    _sync(device)
    return time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_plain(setup: Setup) -> Row:
    """(a): one process, the global batch, a local optimizer step."""
    torch.set_num_threads(setup.threads)
    device = device_for(setup, 0)
    torch.manual_seed(0)
    model = build_model(setup.arch, setup.channels, setup.classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = synthetic(setup, setup.global_batch, device)
    step = training_step(model, optimizer, x, y)

    seconds = timed_steps(setup, step, device)
    return Row("(a) plain process", 1, setup.global_batch, setup.global_batch * setup.steps / seconds)


def _ps_config(workers: int) -> TrainConfig:
    return TrainConfig(store_uri="unused", dataset_prefix="unused", output_prefix="unused", num_ps=1, num_workers=workers, rpc_timeout_s=300)


def _ps_rank(rank: int, setup: Setup, port: int, queue) -> None:
    """One rank of a PS run: rank 0 serves the only shard, the others are workers."""
    with tempfile.TemporaryDirectory() as scratch:  # a store for the shard's checkpoints: none is written here
        _ps_rank_in(rank, setup, port, queue, scratch)


def _ps_rank_in(rank: int, setup: Setup, port: int, queue, scratch: str) -> None:
    warnings.filterwarnings("ignore", message=".*ProcessGroupGloo.*as a ProcessGroup.*")
    config = _ps_config(setup.workers)
    torch.manual_seed(0)
    model = build_model(setup.arch, setup.channels, setup.classes)
    if rank == 0:
        torch.set_num_threads(1)
        shard = server.make_shard(flatten(list(model.parameters())), config, total_steps=10**6, warmup_steps=1)
        server.install_shard(shard, 0, config, open_store(scratch))
    else:
        torch.set_num_threads(threads_per_worker(setup))
    name = ps_name(0) if rank == 0 else worker_name(rank - 1)
    options = rpc_options(f"tcp://127.0.0.1:{port}", 300, setup.workers)  # the engine's own RPC settings
    rpc.init_rpc(name, rank=rank, world_size=setup.workers + 1, rpc_backend_options=options)
    if rank == 0:
        with contextlib.redirect_stdout(io.StringIO()):  # the shard's summary line would break up the table
            server.serve()
    else:
        queue.put(_ps_worker(setup, model, rank - 1))
    rpc.shutdown()


def _ps_worker(setup: Setup, model: torch.nn.Module, worker: int) -> tuple[int, float, float, float]:
    device = device_for(setup, worker)
    model.to(device)
    remote = RemoteParameters(model, ShardLayout.balanced(model, 1), worker)
    remote.pull()
    x, y = synthetic(setup, setup.batch, device)

    def step() -> None:
        model.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        remote.push_pull()

    for _ in range(setup.warmup):
        step()
    comm, moved = remote.comm_seconds, remote.bytes_moved
    seconds = timed_steps(replace(setup, warmup=0), step, device)
    remote.finish()
    return worker, seconds, (remote.comm_seconds - comm) / seconds, (remote.bytes_moved - moved) / setup.steps


def run_ps(setup: Setup, label: str) -> Row:
    """(b) and (c): the parameter server and ``setup.workers`` workers, each process spawned fresh."""
    results = _spawn(_ps_rank, setup, setup.workers + 1)
    _, seconds, comm, moved = min(results)  # worker 0's view; sync workers move in lockstep
    return Row(label, setup.workers, setup.batch, setup.global_batch * setup.steps / seconds, comm, moved)


def _ddp_rank(rank: int, setup: Setup, port: int, queue) -> None:
    torch.set_num_threads(threads_per_worker(setup))
    device = device_for(setup, rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=setup.workers)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(build_model(setup.arch, setup.channels, setup.classes).to(device),
                                                      device_ids=[rank] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = synthetic(setup, setup.batch, device)
    step = training_step(model, optimizer, x, y)

    queue.put((rank, timed_steps(setup, step, device), None, None))
    dist.destroy_process_group()


def run_ddp(setup: Setup) -> Row:
    """(d): DistributedDataParallel with ``setup.workers`` processes."""
    results = _spawn(_ddp_rank, setup, setup.workers)
    seconds = max(r[1] for r in results)
    backend = "nccl" if setup.device == "cuda" else "gloo"
    return Row(f"(d) DDP ({backend}), N workers", setup.workers, setup.batch, setup.global_batch * setup.steps / seconds)


def _spawn(target, setup: Setup, processes: int) -> list[tuple]:
    """Start ``processes`` ranks of ``target``; collect what the workers put on the queue."""
    context = mp.get_context("spawn")
    queue, port = context.Queue(), free_port()
    procs = [context.Process(target=target, args=(rank, setup, port, queue)) for rank in range(processes)]
    for p in procs:
        p.start()
    expected = setup.workers
    results = [queue.get(timeout=600) for _ in range(expected)]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"expected every benchmark rank to exit 0, rank {procs.index(p)} exited with {p.exitcode}")
    return results


def measure(setup: Setup, repeats: int) -> list[Row]:
    """Every row ``repeats`` times, interleaved (so a burst of load elsewhere hits all rows alike); best of each."""
    one = replace(setup, batch=setup.global_batch, workers=1)
    runs = [lambda: run_plain(setup), lambda: run_ps(one, "(b) PS, 1 worker"), lambda: run_ps(setup, "(c) PS, N workers"),
            lambda: run_ddp(setup)]
    trials = [[run() for run in runs] for _ in range(repeats)]
    return [max((trial[i] for trial in trials), key=lambda r: r.samples_per_s) for i in range(len(runs))]


def parameter_bytes(setup: Setup) -> int:
    return 4 * sum(p.numel() for p in build_model(setup.arch, setup.channels, setup.classes).parameters())


def table(setup: Setup, rows: list[Row]) -> str:
    twice = 2 * parameter_bytes(setup)
    lines = [f"{setup.arch} {setup.channels}x{setup.size}x{setup.size} on {setup.device} ({os.cpu_count()} cores, {setup.threads} threads/row"
             f"{', ' + torch.cuda.get_device_name(0) if setup.device == 'cuda' else ''}), global batch {setup.global_batch}, "
             f"{setup.steps} measured steps after {setup.warmup} warm-up; 2x parameter bytes = {twice:,}",
             "| run | workers | batch/worker | samples/s | comm+wait | bytes/step/worker | vs 2x params |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        comm = f"{r.comm_fraction:.0%}" if r.comm_fraction is not None else "-"
        moved = f"{r.bytes_per_step:,.0f}" if r.bytes_per_step is not None else "-"
        ratio = f"{r.bytes_per_step / twice:.2f}x" if r.bytes_per_step is not None else "-"
        lines.append(f"| {r.label} | {r.workers} | {r.batch} | {r.samples_per_s:,.0f} | {comm} | {moved} | {ratio} |")
    a, b, c, d = (r.samples_per_s for r in rows)
    lines.append(f"b/a = {b / a:.2f}   c/d = {c / d:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="N for the CPU rows (GPU rows: one worker per GPU)")
    parser.add_argument("--steps", type=int, default=30, help="measured steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps per row (not measured)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per row (split among its workers)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each row; the best is reported")
    args = parser.parse_args(argv)
    setups = [Setup("small_cnn", 1, 28, 10, 32, args.workers, "cpu", args.steps, args.warmup, args.threads)]
    if torch.cuda.is_available():
        setups.append(Setup("resnet18", 3, 32, 10, 128, torch.cuda.device_count(), "cuda", args.steps, args.warmup, args.threads))
    for setup in setups:
        print(table(setup, measure(setup, args.repeats)), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
