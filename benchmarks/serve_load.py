"""Load benchmark for the predictor: ``python benchmarks/serve_load.py [--seconds S] [--resnet]``.

Prints one table from one run:

- the limit: the raw in-process forward throughput (images/s) at batch 1 and at the maximum batch, with
  the same torch thread count the server uses;
- for single-image requests at concurrency 1, 16 and 64, with dynamic batching on and off: the served
  requests/s, p50 and p99 latency, errors, the server's CPU time per request (steadier than requests/s
  on a shared machine), and served/limit ratios.

The server runs as a real process (``python -m serving``); the load comes over HTTP from a separate
process (this script's ``drive`` mode: asyncio + aiohttp, closed loop, one connection per concurrent
client, a warm-up second not counted). Rows: the small CNN (1x28x28; v1 pixel instances and v2 FP32
tensors) always; ResNet-18 at 224x224 (v2 BYTES tensors carrying a PNG) when a CUDA device is present,
or with ``--resnet``.
On a machine shared with other work, numbers move from run to run: compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "bench"
CONCURRENCY = (1, 16, 64)


@dataclass(frozen=True)
class Model:
    """A network to serve: its architecture and input size."""

    title: str
    arch: str
    channels: int
    size: int


@dataclass(frozen=True)
class Request:
    """A kind of single-image request: the protocol path and the body (encoded once, outside the timing)."""

    name: str
    path: str
    body: bytes


SMALL = Model("small_cnn 1x28x28", "small_cnn", 1, 28)
RESNET = Model("resnet18 3x224x224", "resnet18", 3, 224)


# -- the model and the limit -------------------------------------------------------------------------


def make_version(folder: Path, model: Model) -> Path:
    """A complete model version with seeded random weights (throughput does not depend on training)."""
    import torch

    from components.modelfile import MANIFEST_FILE, ModelCard, build_manifest, save_model
    from components.nets import build_model

    card = ModelCard(model.arch, model.channels, model.size, model.size, [str(i) for i in range(10)],
                     [0.5] * model.channels, [0.25] * model.channels)
    torch.manual_seed(0)
    save_model(folder, build_model(card.arch, card.in_channels, card.num_classes), card)
    (folder / MANIFEST_FILE).write_text(json.dumps(build_manifest(folder, {"version": 1})))
    return folder


def raw_throughput(folder: Path, batch_size: int, seconds: float, threads: int) -> float:
    """Images/s of the forward pass the server runs (predict_proba), in this process, median pass time."""
    import torch

    from components.modelfile import load_model
    from components.predict import predict_proba

    torch.set_num_threads(threads)
    net, card = load_model(folder, "cuda" if torch.cuda.is_available() else "cpu")
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch_size, *card.input_shape)).astype(np.float32))
    for _ in range(5):
        predict_proba(net, pixels, card)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        predict_proba(net, pixels, card)  # returns CPU tensors: includes the device round trip
        times.append(time.perf_counter() - t)
    return batch_size / float(np.median(times))


# -- the server ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, batching: bool, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "serving", "--model-uri", str(folder), "--model-name", MODEL_NAME, "--http-port", str(port),
               "--enable_grpc", "false", "--batching" if batching else "--no-batching", "--max-batch-size", str(args.max_batch_size),
               "--max-batch-wait-ms", str(args.max_batch_wait_ms), "--max-instances", str(args.max_batch_size),
               "--enable_latency_logging", "false"]
    with open(log, "wb") as output:
        proc = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, log)
    return proc, url


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 120) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/v2/models/{MODEL_NAME}/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    proc.kill()
    sys.exit(f"the server was not ready within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the load (a separate process) ------------------------------------------------------------------------


def requests_for(model: Model) -> list[Request]:
    """Single-image requests: pixels (v1 instance, v2 FP32) for the small CNN; a PNG (v2 BYTES) for ResNet."""
    rng = np.random.default_rng(1)
    if model.arch != SMALL.arch:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (model.size, model.size, 3), dtype=np.uint8), "RGB").save(buffer, "PNG")
        tensor = {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(buffer.getvalue()).decode()]}
        return [Request("v2 BYTES (PNG)", f"/v2/models/{MODEL_NAME}/infer", json.dumps({"inputs": [tensor]}).encode())]
    pixels = rng.integers(0, 256, (1, model.channels, model.size, model.size))
    tensor = {"name": "images", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.ravel().tolist()}
    return [
        Request("v1 pixels", f"/v1/models/{MODEL_NAME}:predict", json.dumps({"instances": pixels.tolist()}).encode()),
        Request("v2 FP32", f"/v2/models/{MODEL_NAME}/infer", json.dumps({"inputs": [tensor]}).encode()),
    ]


async def drive(url: str, body: bytes, concurrency: int, seconds: float, warmup: float, path: str) -> dict:
    """Closed loop: ``concurrency`` clients, each sending its next request when the last one answers."""
    import aiohttp

    latencies: list[float] = []
    errors = sent = 0
    endpoint = f"{url}{path}"
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop_at = measure_from + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors, sent
        while (start := loop.time()) < stop_at:
            try:
                async with session.post(endpoint, data=body, headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    ok = response.status == 200
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            sent += 1
            if start >= measure_from:
                latencies.append(loop.time() - start)
                errors += not ok

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "sent": sent, "errors": errors, "rps": len(ms) / seconds,
            "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"), "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan")}


def run_load(server: subprocess.Popen, url: str, path: str, body_file: Path, concurrency: int, seconds: float, warmup: float) -> dict:
    """One row's load, plus the server's CPU time per request (user + system, all its threads, warm-up
    included): a machine shared with other work changes requests/s from run to run far more than it."""
    import psutil

    command = [sys.executable, __file__, "drive", "--url", url, "--path", path, "--body", str(body_file), "--concurrency", str(concurrency),
               "--seconds", str(seconds), "--warmup", str(warmup)]
    before = psutil.Process(server.pid).cpu_times()
    run = subprocess.run(command, capture_output=True, text=True, timeout=seconds + warmup + 120, check=True)
    after = psutil.Process(server.pid).cpu_times()
    result = json.loads(run.stdout)
    cpu_s = (after.user - before.user) + (after.system - before.system)
    result["cpu_ms"] = 1000 * cpu_s / result["sent"] if result["sent"] else float("nan")
    return result


# -- the table ------------------------------------------------------------------------------------------------


def bench_model(model: Model, args: argparse.Namespace, scratch: Path) -> list[str]:
    folder = make_version(scratch / model.arch, model)
    limit_1 = raw_throughput(folder, 1, args.raw_seconds, args.torch_threads)
    limit_max = raw_throughput(folder, args.max_batch_size, args.raw_seconds, args.torch_threads)
    kinds = requests_for(model)
    for i, kind in enumerate(kinds):
        (scratch / f"{model.arch}-{i}.json").write_bytes(kind.body)
    results = {}
    for batching in (True, False):
        proc, url = start_server(folder, batching, args, scratch / f"{model.arch}-{batching}.log")
        try:
            for i, kind in enumerate(kinds):
                for c in args.concurrency:
                    results[kind.name, batching, c] = run_load(proc, url, kind.path, scratch / f"{model.arch}-{i}.json", c, args.seconds, args.warmup)
        finally:
            stop_server(proc)
    lines = [f"{model.title}: limit (in-process forward) batch 1: {limit_1:,.0f} img/s, batch {args.max_batch_size}: {limit_max:,.0f} img/s",
             "| request | batching | concurrency | req/s | p50 ms | p99 ms | errors | server CPU ms/req | served/limit(b1) | served/limit(max) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (name, batching, c), r in results.items():
        lines.append(f"| {name} | {'on' if batching else 'off'} | {c} | {r['rps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | {r['cpu_ms']:.2f} | "
                     f"{r['rps'] / limit_1:.2f} | {r['rps'] / limit_max:.2f} |")
    lines += [verdict(model, kind.name, results, args.concurrency[-1], limit_max) for kind in kinds]
    return lines


def verdict(model: Model, name: str, results: dict, c: int, limit_max: float) -> str:
    """The issue's targets: the small CNN on CPU (speed-up, p99, errors); ResNet-18 on a GPU (served/limit)."""
    on, off = results[name, True, c], results[name, False, c]
    speedup = on["rps"] / off["rps"] if off["rps"] else float("inf")
    served = on["rps"] / limit_max
    if model.arch != SMALL.arch:
        return f"{name}, concurrency {c}: served/limit(max) on = {served:.2f} (target >= 0.70 on a GPU), errors on/off = {on['errors']}/{off['errors']}"
    return (f"{name}, concurrency {c}: batching on/off = {speedup:.2f}x (target >= 2x), p99 on = {on['p99']:.1f} ms (target < 100 ms), "
            f"errors on/off = {on['errors']}/{off['errors']} (target 0), served/limit(max) on = {served:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    drive_parser = sub.add_parser("drive", help="(internal) the load generator process")
    drive_parser.add_argument("--url", required=True)
    drive_parser.add_argument("--body", type=Path, required=True)
    drive_parser.add_argument("--concurrency", type=int, required=True)
    drive_parser.add_argument("--seconds", type=float, required=True)
    drive_parser.add_argument("--warmup", type=float, required=True)
    drive_parser.add_argument("--path", default=f"/v2/models/{MODEL_NAME}/infer")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring, per row")
    parser.add_argument("--raw-seconds", type=float, default=2.0, help="seconds per in-process limit measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--resnet", action="store_true", help="add the ResNet-18 rows without a CUDA device")
    args = parser.parse_args(argv)
    if args.mode == "drive":
        print(json.dumps(asyncio.run(drive(args.url, args.body.read_bytes(), args.concurrency, args.seconds, args.warmup, args.path))))
        return
    run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import torch

    from serving.__main__ import default_torch_threads

    args.torch_threads = default_torch_threads()
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores, torch threads {args.torch_threads})"
    models = [SMALL, *([RESNET] if gpu or args.resnet else [])]
    lines = [f"serve_load: {device}; server: --max-batch-size {args.max_batch_size} --max-batch-wait-ms {args.max_batch_wait_ms:g} "
             f"--enable_latency_logging false; single-image requests, closed loop, {args.seconds:g} s per row after {args.warmup:g} s "
             "warm-up, load from a separate process"]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        for model in models:
            lines += ["", *bench_model(model, args, Path(scratch))]
    lines.append(f"\n(total {time.monotonic() - started:.0f} s)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
