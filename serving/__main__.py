"""``python -m serving --model-uri URI [--model-name NAME] [--http-port PORT]``: serve one model version.

Extends KServe's own argument parser, so KServe's server options work too.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

import torch
from kserve import ModelServer
from kserve import logging as kserve_logging
from kserve import model_server as kserve_server
from kserve.utils import utils as kserve_utils

from components.errors import ProjectError
from serving import protocol
from serving.batching import BatchingOptions
from serving.model import DEFAULT_MAX_INSTANCES, ImageClassifier

DEFAULT_MAX_BODY_MB = 16.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(parents=[kserve_server.parser], conflict_handler="resolve", description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True, help="model version: a local folder or a store URI")
    parser.add_argument("--model-name", "--model_name", dest="model_name", default="classifier", help="name in the REST paths")
    parser.add_argument("--http-port", "--http_port", dest="http_port", type=int, default=8080)
    parser.add_argument("--grpc-port", "--grpc_port", dest="grpc_port", type=int, default=8081)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes: 1 (scale with replicas instead)")
    parser.add_argument("--max-instances", type=_positive_int, default=DEFAULT_MAX_INSTANCES, help="most images one request may carry (more: 400)")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB, help="largest request body in MiB (larger: 413)")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                        help="coalesce concurrent requests into one forward pass")
    parser.add_argument("--max-batch-size", type=_positive_int, default=64, help="most images in one forward pass")
    parser.add_argument("--max-batch-wait-ms", type=float, default=5.0, help="longest a request waits for others to join its batch")
    parser.add_argument("--torch-threads", type=_positive_int, default=default_torch_threads(),
                        help="CPU threads per forward pass (default: the CPUs this container may use, minus one for the event loop)")
    return parser


def default_torch_threads() -> int:
    # More compute threads than free cores makes OpenMP spin against the event loop: tail latency explodes.
    return max(1, kserve_utils.cpu_count() - 1)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers != 1:
        # KServe's multi-process mode re-imports its app in fresh processes: this server's routes, hardening
        # and batcher would not be there. One process per pod; the InferenceService's replicas scale out.
        parser.error(f"expected --workers 1, found {args.workers}: run more replicas (minReplicas/maxReplicas) instead")
    torch.set_num_threads(args.torch_threads)
    batching = BatchingOptions(args.batching, args.max_batch_size, args.max_batch_wait_ms)
    model = ImageClassifier(args.model_name, args.model_uri, max_instances=args.max_instances, batching=batching)
    try:
        model.load()
    except ProjectError as exc:
        # A tampered or incomplete version must never become ready: say why and exit non-zero.
        logging.getLogger("serving").error("refusing to serve %s: %s", args.model_uri, exc)
        sys.exit(2)
    # Everything imported and loaded so far lives as long as the server: keep the garbage collector from
    # walking those millions of objects in every full collection (a pause of tens of milliseconds per request
    # that happens to wait behind it).
    gc.freeze()
    # One worker process: the batcher coalesces requests only when they share a process.
    server = ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc, workers=1)
    if not args.enable_latency_logging:
        # KServe also logs two timing lines per request on this logger whatever the flag says; "no latency
        # logging" means none (Prometheus keeps the latency histograms). Set after ModelServer configures logging.
        logging.getLogger(kserve_logging.KSERVE_TRACE_LOGGER_NAME).setLevel(logging.WARNING)
    protocol.install(server, kserve_server.app, max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    server.start([model])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


if __name__ == "__main__":
    main()
