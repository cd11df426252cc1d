"""One rank of parameter-server training, configured by arguments and the launcher's environment.

``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` are what the Kubeflow Training Operator
injects into PyTorchJob pods; the local launcher sets the same four. Ranks ``0..P-1`` serve
parameter shards, the rest are workers.

    RANK=0 WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 python -m components.training --store-uri …
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
from components.nets import build_model
from components.training import server
from components.training.config import TrainConfig, from_argv
from components.training.sharding import ShardLayout, flatten
from components.training.worker import ps_name, run_worker, steps_per_epoch, worker_name


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


def build_shard(config: TrainConfig, ps_index: int) -> server.ParameterShard:
    """Initialise shard ``ps_index`` from the seeded model, so every run starts from the same weights."""
    info = read_info(config.store_uri, config.dataset_prefix)
    torch.manual_seed(config.seed)
    model = build_model(config.arch, info.image_shape[0], len(info.class_names))
    layout = ShardLayout.balanced(model, config.num_ps)
    steps = steps_per_epoch(info.counts["train"], config)
    total, warmup = steps * config.epochs, int(steps * config.warmup_epochs)
    return server.ParameterShard(flatten(layout.groups(model)[ps_index]), config, total, max(1, warmup))


def run(config: TrainConfig, env: RankEnv) -> None:
    if env.world_size != config.world_size:
        raise SystemExit(f"expected WORLD_SIZE {config.world_size} (num_ps + num_workers), got {env.world_size}")
    is_server = env.rank < config.num_ps
    if is_server:
        server.install_shard(build_shard(config, env.rank))
    name = ps_name(env.rank) if is_server else worker_name(env.rank - config.num_ps)
    options = rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rpc_timeout=config.rpc_timeout_s,
        num_worker_threads=max(16, 2 * config.num_workers),
    )
    rpc.init_rpc(name, rank=env.rank, world_size=env.world_size, rpc_backend_options=options)
    if not is_server:
        run_worker(config, env.rank - config.num_ps)
    # Graceful shutdown is a barrier: servers wait here until every worker has finished.
    rpc.shutdown()


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
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        # A graceful exit would block in rpc.shutdown() waiting for peers; fail fast instead so
        # the launcher (local or the Training Operator) sees the failure at once.
        os._exit(1)
