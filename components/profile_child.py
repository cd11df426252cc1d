"""``python -m components.profile_child``: one runtime of a version, loaded and served in a fresh process.

Started by :func:`components.profile.profile_runtime`, once per runtime, so each runtime's peak memory is its
own. It loads the version in the real predictor (:class:`serving.model.ImageClassifier`, hash checks
included), times the load, measures the forward pass at batch 1 and at the batcher's maximum in this
process, writes those figures to ``--result`` (JSON), then serves the model behind the real HTTP server
(:func:`serving.__main__.serve`, the flags and defaults a pod gets, in one process) on 127.0.0.1 until it is
terminated.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m components.profile_child", description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=Path, required=True, help="a version folder with a manifest")
    parser.add_argument("--runtime", required=True, help="torch or onnx")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True, help="where the load and forward figures go (JSON)")
    parser.add_argument("--name", default="profile", help="the model name served")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--forward-seconds", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="compute threads, and image-decoding threads")
    return parser


def main(argv: list[str] | None = None) -> None:
    import torch

    from serving.__main__ import build_parser as server_parser
    from serving.__main__ import resolve_workers, serve
    from serving.batching import BatchingOptions
    from serving.model import ImageClassifier
    from serving.workers import die_with_parent

    args = build_parser().parse_args(argv)
    die_with_parent()  # a profiling process killed outright must not leave its server running
    # One server process: the profile measures what one process serves (a pod runs one per CPU of its limit).
    flags = ["--model-uri", str(args.version), "--model-name", args.name, "--http-port", str(args.port), "--enable_grpc", "false",
             "--max-batch-size", str(args.max_batch), "--runtime", args.runtime, "--workers", "1",
             "--torch-threads", str(args.threads), "--decode-threads", str(args.threads)]
    parser = server_parser()
    server_args = parser.parse_args(flags)
    plan = resolve_workers(parser, server_args)
    # What a process holds before any model: about what a pod's supervising process (--workers > 1) holds.
    base_rss = resident_mib("VmRSS")
    torch.set_num_threads(server_args.torch_threads)
    batching = BatchingOptions(server_args.batching, server_args.max_batch_size, server_args.max_batch_wait_ms)
    model = ImageClassifier(args.name, str(args.version), max_instances=server_args.max_instances, batching=batching,
                            max_request_pixels=server_args.max_request_pixels, decode_threads=server_args.decode_threads,
                            runtime=server_args.runtime, threads=server_args.torch_threads)
    started = time.perf_counter()
    model.load()
    load_s = time.perf_counter() - started
    sizes = sorted({1, args.max_batch})
    forward = {str(n): round(forward_rate(model.forward, model.card.input_shape, n, args.forward_seconds), 1) for n in sizes}
    write_result(args.result, {"load_s": round(load_s, 3), "base_rss_mib": base_rss, "forward_ips": forward,
                               "machine": machine(server_args.torch_threads)})
    serve([model], server_args, None, plan.asyncio_threads)


def forward_rate(forward: Callable[[np.ndarray], Any], shape: list[int], batch: int, seconds: float) -> float:
    """Images/s of ``forward`` on ``batch`` random images: the median pass, after a warm-up, for ``seconds``."""
    pixels = np.random.default_rng(0).integers(0, 256, (batch, *shape)).astype(np.float32)
    for _ in range(3):
        forward(pixels)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        began = time.perf_counter()
        forward(pixels)
        times.append(time.perf_counter() - began)
    return batch / float(np.median(times))


def resident_mib(field: str) -> float | None:
    """``field`` (VmRSS, VmHWM) of this process in MiB, from /proc/self/status; None where there is none."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return next((round(int(line.split()[1]) / 1024, 1) for line in status.splitlines() if line.startswith(f"{field}:")), None)


def machine(threads: int) -> dict[str, Any]:
    """What the figures were measured on, as this process sees it."""
    import torch

    from components.cpu import cpu_limit

    found: dict[str, Any] = {"cores": cpu_limit(), "workers": 1, "threads": threads, "device": "cpu"}
    if torch.cuda.is_available():
        found["device"] = f"cuda ({torch.cuda.get_device_name(0)})"
    return found


def write_result(path: Path, result: dict[str, Any]) -> None:
    # Whole or not at all: the parent reads it once the server answers.
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    os.replace(partial, path)


if __name__ == "__main__":
    main()
