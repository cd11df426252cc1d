"""One rank of parameter-server training, configured by arguments and the launcher's environment.

``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` are what the Kubeflow Training Operator
injects into PyTorchJob pods; the local launcher sets the same four. Ranks ``0..P-1`` serve
parameter shards, the rest are workers.

    RANK=0 WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 python -m components.training --store-uri …

Exit codes follow the Training Operator's ``ExitCode`` restart policy: 1 (:data:`EXIT_PERMANENT`) for
errors a restart cannot fix (bad configuration, missing data, a bug), 200 (:data:`EXIT_RETRYABLE`, in
the retried range 128–255) for everything else, above all a peer that vanished or an RPC that timed
out. The local launcher applies the same rule.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from dataclasses import dataclass

import torch
import torch.distributed.rpc as rpc

from components.data.prepare import read_info
from components.errors import ProjectError
from components.nets import build_model
from components.store import Store, open_store
from components.training import checkpoint, server
from components.training.config import TrainConfig, from_argv
from components.training.input import steps_per_epoch
from components.training.sharding import ShardLayout, flatten
from components.training.worker import ps_name, run_worker, worker_name

EXIT_PERMANENT = 1
EXIT_RETRYABLE = 200
# Errors that the same inputs would raise again: retrying the job cannot help.
PERMANENT_ERRORS = (ProjectError, ValueError, TypeError, LookupError, AttributeError, ImportError, NotImplementedError)


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    master_addr: str
    master_port: int

    @classmethod
    def from_environ(cls) -> RankEnv:
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise SystemExit(f"expected the launcher to set {missing} in the environment")
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))


def build_shard(config: TrainConfig, ps_index: int, store: Store) -> server.ParameterShard:
    """Shard ``ps_index`` of the seeded model, or its state from the latest complete checkpoint in ``store``."""
    info = read_info(store, config.dataset_prefix)
    torch.manual_seed(config.seed)
    model = build_model(config.arch, info.image_shape[0], len(info.class_names))
    layout = ShardLayout.balanced(model, config.num_ps)
    # Async mode applies one update per worker gradient: N times as many updates as sync steps.
    updates = steps_per_epoch(info.counts["train"], config) * (config.num_workers if config.mode == "async" else 1)
    total, warmup = updates * config.epochs, int(updates * config.warmup_epochs)
    shard = server.make_shard(flatten(layout.groups(model)[ps_index]), config, total, max(1, warmup))
    record = checkpoint.latest(store, config.checkpoint_key, checkpoint.shape_of(config))
    if record is not None:
        shard.load_state(checkpoint.read_part(store, config.checkpoint_key, record, checkpoint.shard_file(ps_index)))
        print(f"resuming from the checkpoint of step {record.step} (update {shard.step})", flush=True)
    return shard


def rpc_options(init_method: str, timeout_s: float, num_workers: int) -> rpc.TensorPipeRpcBackendOptions:
    """TensorPipe over TCP only: its shared-memory transport busy-polls, and each process then burns about a
    third of a core even while idle, taken from the workers' compute on a CPU node (measured with torch 2.15;
    pods on different hosts never use it anyway). Loopback TCP costs ~0.3 ms more per 200 KB round trip."""
    return rpc.TensorPipeRpcBackendOptions(init_method=init_method, rpc_timeout=timeout_s,
                                           num_worker_threads=max(16, 2 * num_workers), _transports=["uv"])


def run(config: TrainConfig, env: RankEnv) -> None:
    if env.world_size != config.world_size:
        raise SystemExit(f"expected WORLD_SIZE {config.world_size} (num_ps + num_workers), got {env.world_size}")
    is_server = env.rank < config.num_ps
    if is_server:
        store = open_store(config.store_uri)  # this rank's one client: the data set's metadata and the shard's checkpoints
        server.install_shard(build_shard(config, env.rank, store), env.rank, config, store)
    name = ps_name(env.rank) if is_server else worker_name(env.rank - config.num_ps)
    options = rpc_options(f"tcp://{env.master_addr}:{env.master_port}", config.rpc_timeout_s, config.num_workers)
    rpc.init_rpc(name, rank=env.rank, world_size=env.world_size, rpc_backend_options=options)
    if is_server:
        server.serve()
    else:
        run_worker(config, env.rank - config.num_ps)
    # Graceful shutdown is a barrier: every rank waits here until all have finished.
    rpc.shutdown()


def exit_code(error: BaseException) -> int:
    return EXIT_PERMANENT if isinstance(error, PERMANENT_ERRORS) else EXIT_RETRYABLE


def main(argv: list[str] | None = None) -> None:
    # torch 2.15 RPC still builds its internal process group on Gloo and warns about it every start.
    warnings.filterwarnings("ignore", message=".*ProcessGroupGloo.*as a ProcessGroup.*")
    config = from_argv(argv)
    threads = os.environ.get("TRAIN_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    try:
        run(config, RankEnv.from_environ())
    except SystemExit:
        raise
    except BaseException as error:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        # A graceful exit would block in rpc.shutdown() waiting for peers; fail fast instead so
        # the launcher (local or the Training Operator) sees the failure at once.
        os._exit(exit_code(error))
