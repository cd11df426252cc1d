"""One rank of parameter-server training, configured by arguments and the launcher's environment.

Ranks ``0..P-1`` serve parameter shards, ``P..P+N-1`` are workers. Where the rank comes from:

- ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``: what the Kubeflow Training Operator injects
  into PyTorchJob pods; the local launcher sets the same four.

      RANK=0 WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 python -m components.training --store-uri …

- A TrainJob (Kubeflow Trainer v2) on the project's ClusterTrainingRuntime: its JobSet has a ``ps`` job of
  P pods and a ``node`` job of N pods. The Trainer injects ``PET_NNODES`` and ``PET_NODE_RANK`` into the
  ``node`` pods only and knows nothing of the ``ps`` job, so the global ranks are computed here from what
  every pod does get: the JobSet's name and the replicated job's name (the runtime passes its pod labels in
  as ``JOBSET_NAME`` and ``REPLICATED_JOB`` through the downward API), the Indexed Job's
  ``JOB_COMPLETION_INDEX``, and ``MASTER_PORT`` (set by the runtime). ``ps`` pod ``i`` is rank ``i``,
  ``node`` pod ``PET_NODE_RANK`` is rank ``P + PET_NODE_RANK``; the RPC master is ``ps`` pod 0, reached as
  ``<jobset>-ps-0-0.<jobset>`` through the JobSet's headless service.

Exit codes follow the Training Operator's ``ExitCode`` restart policy: 1 (:data:`EXIT_PERMANENT`) for
errors a restart cannot fix (bad configuration, missing data, a bug), 200 (:data:`EXIT_RETRYABLE`, in
the retried range 128–255) for everything else, above all a peer that vanished or an RPC that timed
out. The local launcher applies the same rule.
"""

from __future__ import annotations

import os
import shlex
import sys
import traceback
import warnings
from collections.abc import Mapping
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
from components.training.trainjob import ARGV_VARIABLE, NODE_JOB, PS_JOB
from components.training.worker import ps_name, run_worker, worker_name

EXIT_PERMANENT = 1
EXIT_RETRYABLE = 200
# Errors that the same inputs would raise again: retrying the job cannot help.
PERMANENT_ERRORS = (ProjectError, ValueError, TypeError, LookupError, AttributeError, ImportError, NotImplementedError)


# Test only: resolve every pod hostname to this address, so a test runs the pods' exact environment as
# local processes. Never set by any manifest.
HOST_OVERRIDE = "TRAIN_POD_HOST_OVERRIDE"


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    master_addr: str
    master_port: int

    @classmethod
    def from_environ(cls, num_ps: int, num_workers: int, environ: Mapping[str, str] | None = None) -> RankEnv:
        """The launcher-given rank: the four variables when ``RANK`` is set, else the TrainJob's JobSet variables."""
        environ = os.environ if environ is None else environ
        if "RANK" in environ or "REPLICATED_JOB" not in environ:
            return cls._from_torch_variables(environ)
        return cls._from_jobset(num_ps, num_workers, environ)

    @classmethod
    def _from_torch_variables(cls, environ: Mapping[str, str]) -> RankEnv:
        _require(environ, ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
        return cls(int(environ["RANK"]), int(environ["WORLD_SIZE"]), environ["MASTER_ADDR"], int(environ["MASTER_PORT"]))

    @classmethod
    def _from_jobset(cls, num_ps: int, num_workers: int, environ: Mapping[str, str]) -> RankEnv:
        _require(environ, ("JOBSET_NAME", "REPLICATED_JOB", "MASTER_PORT"))
        jobset, job = environ["JOBSET_NAME"], environ["REPLICATED_JOB"]
        if job == PS_JOB:
            _require(environ, ("JOB_COMPLETION_INDEX",))
            rank = int(environ["JOB_COMPLETION_INDEX"])
            if not 0 <= rank < num_ps:
                raise SystemExit(f"expected JOB_COMPLETION_INDEX in 0..{num_ps - 1} (num_ps={num_ps}) in the {PS_JOB} job, got {rank}")
        elif job == NODE_JOB:
            _require(environ, ("PET_NNODES", "PET_NODE_RANK"))
            if int(environ["PET_NNODES"]) != num_workers:
                raise SystemExit(f"expected PET_NNODES={num_workers} (num_workers), got {environ['PET_NNODES']}: the TrainJob's "
                                 f"trainer.numNodes and the training arguments disagree")
            rank = num_ps + int(environ["PET_NODE_RANK"])
        else:
            raise SystemExit(f"expected REPLICATED_JOB {PS_JOB!r} or {NODE_JOB!r}, got {job!r}")
        master = environ.get(HOST_OVERRIDE) or f"{jobset}-{PS_JOB}-0-0.{jobset}"
        return cls(rank, num_ps + num_workers, master, int(environ["MASTER_PORT"]))


def _require(environ: Mapping[str, str], names: tuple[str, ...]) -> None:
    missing = [k for k in names if k not in environ]
    if missing:
        raise SystemExit(f"expected the launcher to set {missing} in the environment")


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


def command_line() -> list[str]:
    """The arguments, else ``TRAIN_ARGV`` (shell-quoted): a ClusterTrainingRuntime fixes the ``ps`` pods' command,
    and a TrainJob can patch only their environment, so both of its jobs get the arguments that way."""
    if sys.argv[1:] or ARGV_VARIABLE not in os.environ:
        return sys.argv[1:]
    return shlex.split(os.environ[ARGV_VARIABLE])


def exit_code(error: BaseException) -> int:
    return EXIT_PERMANENT if isinstance(error, PERMANENT_ERRORS) else EXIT_RETRYABLE


def main(argv: list[str] | None = None) -> None:
    # torch 2.15 RPC still builds its internal process group on Gloo and warns about it every start.
    warnings.filterwarnings("ignore", message=".*ProcessGroupGloo.*as a ProcessGroup.*")
    config = from_argv(argv if argv is not None else command_line())
    threads = os.environ.get("TRAIN_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    try:
        run(config, RankEnv.from_environ(config.num_ps, config.num_workers))
    except SystemExit:
        raise
    except BaseException as error:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        # A graceful exit would block in rpc.shutdown() waiting for peers; fail fast instead so
        # the launcher (local or the Training Operator) sees the failure at once.
        os._exit(exit_code(error))
