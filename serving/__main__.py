"""``python -m serving --model-uri URI [--model-name NAME] [--http-port PORT] [--listen-address ADDR]``: serve one model version.

Extends KServe's own argument parser, so KServe's server options work too. Listens on 127.0.0.1 unless
``--listen-address`` says otherwise (a container passes 0.0.0.0); gRPC only with ``--enable_grpc true``.
``--collect-uri STORE_URI`` records a sample of requests for monitoring (:mod:`serving.collect`).
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import socket
import sys

import torch
from kserve import logging as kserve_logging
from kserve import model_server as kserve_server
from kserve.utils import utils as kserve_utils

from components.cpu import cpu_limit
from components.errors import ProjectError
from components.imagefile import MAX_IMAGE_PIXELS
from components.runtimes import AUTO, RUNTIMES
from components.store import Store, open_store
from serving import http_limits, protocol, workers
from serving.batching import BatchingOptions
from serving.collect import CollectOptions, Collector
from serving.model import DEFAULT_MAX_INSTANCES, ImageClassifier
from serving.server import HardenedModelServer, NetworkSettings
from serving.workers import WorkerPlan, parse_workers

DEFAULT_MAX_BODY_MB = 16.0
DEFAULT_COLLECT_FRACTION = 0.1
DEFAULT_COLLECT_IMAGES_FRACTION = 0.0


def build_parser() -> argparse.ArgumentParser:
    # A copy: "resolve" edits the parent's actions for each flag redefined here (KServe's --workers, ...), so from
    # the second parser built in a process on, KServe's defaults (1 worker, latency logging on) would win.
    parser = argparse.ArgumentParser(parents=[copy.deepcopy(kserve_server.parser)], conflict_handler="resolve",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True, help="model version: a local folder or a store URI")
    parser.add_argument("--model-name", "--model_name", dest="model_name", default="classifier", help="name in the REST paths")
    parser.add_argument("--http-port", "--http_port", dest="http_port", type=int, default=8080)
    parser.add_argument("--grpc-port", "--grpc_port", dest="grpc_port", type=int, default=8081)
    parser.add_argument("--enable_grpc", "--enable-grpc", dest="enable_grpc", type=kserve_utils.strtobool, default=False,
                        help="also serve the Open Inference Protocol over gRPC (without its model-repository RPCs)")
    parser.add_argument("--listen-address", "--http-host", dest="listen_address", default="127.0.0.1",
                        help="address HTTP and gRPC listen on (a container: 0.0.0.0)")
    parser.add_argument("--max-header-bytes", type=_positive_int, default=http_limits.DEFAULT_MAX_HEADER_BYTES,
                        help="largest request line plus headers in bytes (larger: 431)")
    parser.add_argument("--max-headers", type=_positive_int, default=http_limits.DEFAULT_MAX_HEADERS, help="most request headers (more: 431)")
    parser.add_argument("--request-timeout-s", type=_positive_float, default=http_limits.DEFAULT_REQUEST_TIMEOUT_S,
                        help="longest a request may take to arrive whole, headers and body (longer: 408)")
    parser.add_argument("--max-connections", type=_positive_int, default=http_limits.DEFAULT_MAX_CONNECTIONS,
                        help="most open connections or requests in progress, per server process (more: 503)")
    parser.add_argument("--max-request-pixels", type=_positive_int, default=MAX_IMAGE_PIXELS,
                        help="most decoded pixels the encoded images of one request may add up to, from their headers (more: 400)")
    parser.add_argument("--decode-threads", type=_positive_int, default=None,
                        help="threads per process that decode image files (default: the container's CPU limit / --workers)")
    parser.add_argument("--workers", default="auto", metavar="auto|N",
                        help="server processes, each with the model, its batcher and its collector, on one port (default auto: "
                             "one per CPU of the container's limit)")
    parser.add_argument("--enable_latency_logging", "--enable-latency-logging", dest="enable_latency_logging",
                        type=kserve_utils.strtobool, default=False,
                        help="log timing lines per request (default false: the Prometheus latency histograms stay)")
    parser.add_argument("--max-instances", type=_positive_int, default=DEFAULT_MAX_INSTANCES, help="most images one request may carry (more: 400)")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB, help="largest request body in MiB (larger: 413)")
    parser.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                        help="coalesce concurrent requests into one forward pass")
    parser.add_argument("--max-batch-size", type=_positive_int, default=64, help="most images in one forward pass")
    parser.add_argument("--max-batch-wait-ms", type=float, default=5.0, help="longest a request waits for others to join its batch")
    parser.add_argument("--torch-threads", type=_positive_int, default=None,
                        help="CPU threads per forward pass, either runtime (default: the container's CPU limit / --workers, minus one for the event loop)")
    parser.add_argument("--runtime", choices=(AUTO, *RUNTIMES), default=AUTO,
                        help="forward pass: torch (eager PyTorch), onnx (onnxruntime on the version's parity-checked model.onnx), "
                             "or auto (what the version's profile measured faster; else onnx when exported; else torch)")
    parser.add_argument("--collect-uri", default=None, metavar="STORE_URI",
                        help="record sampled requests under STORE_URI/collected/MODEL/ for monitoring (default: off)")
    parser.add_argument("--collect-fraction", type=_fraction, default=None, metavar="F",
                        help=f"fraction of requests recorded, 0 to 1 (default {DEFAULT_COLLECT_FRACTION}; needs --collect-uri)")
    parser.add_argument("--collect-images-fraction", type=_fraction, default=None, metavar="F",
                        help="fraction of requests whose preprocessed images are saved too, at most --collect-fraction "
                             f"(default {DEFAULT_COLLECT_IMAGES_FRACTION}; needs --collect-uri)")
    return parser


def collect_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> CollectOptions | None:
    """The collection options the flags ask for (None: off), or a one-line argparse error."""
    if args.collect_uri is None:
        given = [flag for flag, value in (("--collect-fraction", args.collect_fraction),
                                          ("--collect-images-fraction", args.collect_images_fraction)) if value is not None]
        if given:
            parser.error(f"{given[0]} needs --collect-uri STORE_URI (collection is off without it)")
        return None
    fraction = DEFAULT_COLLECT_FRACTION if args.collect_fraction is None else args.collect_fraction
    images = DEFAULT_COLLECT_IMAGES_FRACTION if args.collect_images_fraction is None else args.collect_images_fraction
    if images > fraction:
        # Images are saved with their records: only a recorded request can have its images saved.
        parser.error(f"expected --collect-images-fraction at most --collect-fraction ({fraction:g}), got {images:g}")
    return CollectOptions(fraction=fraction, images_fraction=images)


def default_torch_threads(workers: int = 1) -> int:
    """Compute threads per process where --torch-threads is not given (see serving.workers.WorkerPlan)."""
    return WorkerPlan(workers, cpu_limit()).torch_threads


def resolve_workers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> WorkerPlan:
    """--workers as a count, and the thread counts each process runs where they were not given."""
    try:
        plan = WorkerPlan(parse_workers(args.workers, cpu_limit()), cpu_limit())
    except ValueError as exc:
        parser.error(str(exc))
    args.torch_threads = args.torch_threads or plan.torch_threads
    args.decode_threads = args.decode_threads or plan.decode_threads
    return plan


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = resolve_workers(parser, args)
    collecting = collect_options(parser, args)
    if plan.workers > 1 and not workers.is_worker():
        # The parent: checks what it can say in one line, binds the port, starts one `python -m serving` per
        # worker with these arguments, supervises.
        if collecting is not None:
            open_collect_store(args.collect_uri)
        if args.configure_logging:
            kserve_logging.configure_logging(args.log_config_file)
        sys.exit(workers.supervise(sys.argv[1:] if argv is None else argv, plan.workers, args.listen_address, args.http_port))
    if workers.is_worker():
        workers.die_with_parent()
    collector = None if collecting is None else Collector(open_collect_store(args.collect_uri), args.model_name, collecting)
    torch.set_num_threads(args.torch_threads)
    batching = BatchingOptions(args.batching, args.max_batch_size, args.max_batch_wait_ms)
    model = ImageClassifier(args.model_name, args.model_uri, max_instances=args.max_instances, batching=batching,
                            max_request_pixels=args.max_request_pixels, decode_threads=args.decode_threads, collector=collector,
                            runtime=args.runtime, threads=args.torch_threads)
    try:
        model.load()
    except ProjectError as exc:
        # A tampered or incomplete version must never become ready: say why and exit non-zero.
        logging.getLogger("serving").error("refusing to serve %s: %s", args.model_uri, exc)
        sys.exit(2)
    if workers.is_worker():
        workers.wait_for_siblings()
    serve([model], args, workers.worker_sockets() if workers.is_worker() else None, plan.asyncio_threads)


def open_collect_store(uri: str) -> Store:
    try:
        return open_store(uri)
    except ProjectError as exc:  # a malformed URI: say so before serving, not on the first batch
        logging.getLogger("serving").error("refusing --collect-uri %s: %s", uri, exc)
        sys.exit(2)


def serve(models: list[ImageClassifier], args: argparse.Namespace, sockets: list[socket.socket] | None = None,
          asyncio_threads: int | None = None) -> None:
    """Serve loaded ``models`` from this process with the network and logging options in ``args``; returns
    when the server stops. ``main`` serves one; a test serves two (what a client sees from a server with several).
    ``sockets``: a worker's listening sockets (:mod:`serving.workers`)."""
    # Everything imported and loaded so far lives as long as the server: keep the garbage collector from
    # walking those millions of objects in every full collection (a pause of tens of milliseconds per request
    # that happens to wait behind it).
    gc.freeze()
    # The batcher coalesces requests only when they share a process: each worker process has its own.
    server = HardenedModelServer(network_settings(args), max_asyncio_workers=asyncio_threads or min(32, cpu_limit() + 4),
                                 enable_latency_logging=args.enable_latency_logging)
    # Operators check here that the pod's CPU limit was read (cgroup v2 or v1), not the node's cores.
    logging.getLogger(kserve_logging.KSERVE_LOGGER_NAME).info("CPU limit %d: %d decode threads, %d torch threads; %s", cpu_limit(),
                                                             args.decode_threads, args.torch_threads, server.settings)
    for model in models:
        if model.collector is not None:
            logging.getLogger(kserve_logging.KSERVE_LOGGER_NAME).info("%s: %s", model.name, model.collector.describe())
    if not args.enable_latency_logging:
        # KServe also logs two timing lines per request on this logger whatever the flag says; "no latency
        # logging" means none (Prometheus keeps the latency histograms). Set after ModelServer configures logging.
        logging.getLogger(kserve_logging.KSERVE_TRACE_LOGGER_NAME).setLevel(logging.WARNING)
    app = protocol.install(server, kserve_server.app, max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    server.start(models, app, sockets)


def network_settings(args: argparse.Namespace) -> NetworkSettings:
    limits = http_limits.HttpLimits(args.max_header_bytes, args.max_headers, args.request_timeout_s, args.max_connections)
    return NetworkSettings(args.listen_address, args.http_port, args.grpc_port if args.enable_grpc else None, limits,
                           args.timeout_keep_alive)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


if __name__ == "__main__":
    main()
