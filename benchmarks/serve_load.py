"""Load benchmark for the predictor: ``python benchmarks/serve_load.py [--seconds S] [--resnet] [--collect] [--driver {wrk,aiohttp}] [--no-pin] [--server-repo PATH] [--runtimes R…] [--processes N]``.

Prints one table per model from one run:

- the limit per runtime (torch, and onnx where the version's ONNX export passed its parity check; the
  benchmark exports it as push does): the raw in-process forward throughput (images/s) at batch 1 and at
  the maximum batch, with the thread count one server process uses;
- per runtime (``--runtime``) and for 1 and N server processes (``--workers``; N: the CPUs this benchmark may
  use, ``--processes``), for single-image requests at concurrency 1, 16 and 64, batching on: the served
  requests/s, p50 and p99 latency, errors, the server's CPU time per request summed over all its processes
  (steadier than requests/s on a shared machine), and served/limit ratios (the limit times the number of
  processes: each has a core); for the first runtime and one process, the same rows with batching off;
- one line per target of the issue (CPU per request, served/limit, p99, errors, N processes against one,
  onnx against torch at batch 1);
- for the small CNN, the floor: the same server with the model's work taken out (``benchmarks/http_floor.py``:
  the body read and a fixed answer; then also the body parsed and its pixels decoded), driven with the v2
  request at the highest concurrency, and the highest served/limit(max) each floor leaves each runtime (from
  this checkout's server only, not with ``--server-repo``);
- with ``--collect``: the same highest-concurrency rows, batching on, with the server collecting every request
  and a tenth of them (``--collect-uri``, a local folder), against collection off: the servers side by side,
  taking turns, with a second collection-off server whose ratio to the first (A/A) is the method's noise in
  that run (see ``collection_rows``).

The server runs as a real process (``python -m serving``); the load comes over HTTP from a separate
process, closed loop, one connection per concurrent client, a warm-up not counted: ``wrk`` (native, one
thread; the default where it is installed, a Lua script written at run time POSTs the body and prints
the result as one JSON line; it runs whole seconds, so --seconds and --warmup are rounded up) or this
script's ``drive`` mode (``--driver aiohttp``: asyncio + aiohttp, itself Python, so at high concurrency
it can be the bottleneck). Rows: the small CNN (1x28x28; v1 pixel instances and v2 FP32 tensors)
always; ResNet-18 at 224x224 (v2 BYTES tensors carrying a PNG) when a CUDA device is present, or with
``--resnet``. Errors are failed requests: non-2xx answers, connection errors and timeouts.

With two or more CPUs one server process runs on one core (``taskset``) and the load generator on another,
so the two do not take turns on one core (``--no-pin`` turns it off); the in-process limit is measured on
the server's core with the server's thread count. N server processes get N cores, and the load generator
shares them (on a 2-CPU machine there is no core left for it): the N-process rows pay for the load too, and
the header says so. The header names the cores; the last line gives the machine's 1-minute load average at
the start and the end: a run that started or ended above ~1 per core shared its cores with other work.

Before/after: ``--server-repo PATH`` runs the server from another checkout of this repository (cwd and
PYTHONPATH, the same interpreter), e.g. ``git worktree add /tmp/serve-before COMMIT``, then one command
per version (``--server-repo /tmp/serve-before``, and without it). Both runs pass the server only the
flags both versions accept (from the other checkout's ``--help``); the header lists any left out (a server
without ``--runtime`` gets torch rows only, one without ``--workers`` one-process rows only).
On a machine shared with other work, numbers move from run to run: compare rows of one run, or runs
whose load averages were alike; the server's CPU ms per request moves least.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "bench"
CONCURRENCY = (1, 16, 64)
# The collection rows' servers, by label: the fraction of requests each collects (0: off). The second server with
# collection off measures nothing but the method's noise: its ratio to the first (an A/A comparison) says how
# far apart two identical servers read in this run, the scale the collection ratios are read against.
COLLECT_BASE = "off"
COLLECT_SERVERS = {COLLECT_BASE: 0.0, "off (a second server: A/A)": 0.0, "1": 1.0, "0.1": 0.1}
# Among the server flags: "this server runs several processes" (an older one accepts only --workers 1).
MULTI_PROCESS = "(--workers N)"


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


@dataclass(frozen=True)
class Placement:
    """The cores the server and the load generator may run on (None: wherever the OS puts them)."""

    server: tuple[int, ...] | None
    load: tuple[int, ...] | None


@dataclass(frozen=True)
class Setup:
    """One server configuration: its runtime, its number of processes, batching on or off."""

    runtime: str
    processes: int
    batching: bool = True

    @property
    def title(self) -> str:
        return f"{self.runtime}, {self.processes} proc{'' if self.processes == 1 else 's'}, batching {'on' if self.batching else 'off'}"


SMALL = Model("small_cnn 1x28x28", "small_cnn", 1, 28)
# benchmarks/http_floor.py's modes: the server with the model's work taken out.
FLOOR_MODES = {"http": "body read, fixed answer (HTTP only)", "parse": "body read, parsed and its pixels decoded, fixed answer"}
RESNET = Model("resnet18 3x224x224", "resnet18", 3, 224)


# -- the model and the limit -------------------------------------------------------------------------


def make_version(folder: Path, model: Model) -> Path:
    """A complete model version with seeded random weights (throughput does not depend on training), exported
    to ONNX and parity-checked as push does (on random images: there is no test split here)."""
    import torch

    from components.modelfile import MANIFEST_FILE, ModelCard, build_manifest, save_model
    from components.nets import build_model

    card = ModelCard(model.arch, model.channels, model.size, model.size, [str(i) for i in range(10)],
                     [0.5] * model.channels, [0.25] * model.channels)
    torch.manual_seed(0)
    net = build_model(card.arch, card.in_channels, card.num_classes)
    save_model(folder, net, card)
    (folder / MANIFEST_FILE).write_text(json.dumps(build_manifest(folder, {"version": 1, "onnx": export_record(net, card, folder)})))
    return folder


def export_record(net, card, folder: Path) -> dict:  # noqa: ANN001 - torch types, imported lazily
    """The manifest's ``onnx`` record for ``net``: push's export and parity check, on 64 random images."""
    try:
        from components.export import export_onnx
    except ImportError as exc:  # a checkout from before the ONNX runtime
        return {"passed": False, "error": f"no exporter in this checkout ({exc})"}
    rng = np.random.default_rng(2)
    return export_onnx(net, card, folder, [rng.integers(0, 256, (64, *card.input_shape), dtype=np.uint8)])


def runtimes_of(folder: Path, asked: list[str]) -> tuple[list[str], list[str]]:
    """The runtimes to measure among ``asked``, and a line for each one skipped (onnx without a passing export)."""
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    record = manifest.get("onnx") or {}
    if "onnx" in asked and record.get("passed") is not True:
        return [r for r in asked if r != "onnx"], [f"onnx skipped: the version has no ONNX export that passed parity ({record.get('error')})"]
    return list(asked), []


def raw_throughput(folder: Path, runtime: str, batch_size: int, seconds: float, threads: int, cores: tuple[int, ...] | None) -> float:
    """Images/s of the forward pass the server runs (``runtime``: torch or onnx), in this process on the
    server's cores, median pass time."""
    import torch

    from components.modelfile import load_model
    from components.runtimes import load_runtime

    device = "cuda" if torch.cuda.is_available() else "cpu"
    _, card = load_model(folder, "cpu")
    forward = load_runtime(folder, card, runtime, device, threads).forward
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, *card.input_shape)).astype(np.float32)
    with pinned(cores):
        for _ in range(5):
            forward(pixels)
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            forward(pixels)  # returns numpy on the CPU: includes the device round trip
            times.append(time.perf_counter() - t)
    return batch_size / float(np.median(times))


# -- where things run ----------------------------------------------------------------------------------


def placement(pin: bool, processes: int = 1) -> Placement:
    """One server process on the first core this process may use, the load on the second: sharing one core,
    each would wait for the other's time slice, and the latency measured would be the scheduler's. N server
    processes on the first N cores, and the load generator on the same cores where there are no more."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin or len(cores) < 2 or shutil.which("taskset") is None:
        return Placement(None, None)
    if processes == 1:
        return Placement((cores[0],), (cores[1],))
    server = tuple(cores[:processes])
    return Placement(server, tuple(cores[processes:processes + 1]) or server)


def taskset(cores: tuple[int, ...] | None) -> list[str]:
    """The command prefix that runs a process on ``cores`` (nothing when unpinned); taskset execs, so the
    process keeps the pid psutil reads the server's CPU time from."""
    return ["taskset", "-c", ",".join(map(str, cores))] if cores else []


@contextmanager
def pinned(cores: tuple[int, ...] | None) -> Iterator[None]:
    """Run this thread on ``cores`` for a while (torch's forward at one thread runs on the calling thread)."""
    if not cores:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cores_text(cores: tuple[int, ...] | None) -> str:
    return f"core {','.join(map(str, cores))}" if cores else "unpinned"


def load_average() -> float:
    """The machine's 1-minute load average: how busy the shared cores were around the run."""
    return float(Path("/proc/loadavg").read_text().split()[0])


# -- the server ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_options(folder: Path, setup: Setup, args: argparse.Namespace, port: int,
                   collect: tuple[Path, float] | None = None) -> list[list[str]]:
    """Every option the benchmark would pass, one flag and its values each. The thread count is explicit:
    an older server sizes it from the machine's cores, not from the cores it is pinned to. ``collect``:
    a folder and the fraction of requests to collect there (no images saved). Latency logging is left at
    the server's default (off here; KServe's own default, on, in a checkout from before)."""
    options = [["--model-uri", str(folder)], ["--model-name", MODEL_NAME], ["--http-port", str(port)], ["--enable_grpc", "false"],
               ["--batching" if setup.batching else "--no-batching"], ["--max-batch-size", str(args.max_batch_size)],
               ["--max-batch-wait-ms", str(args.max_batch_wait_ms)], ["--max-instances", str(args.max_batch_size)],
               ["--torch-threads", str(args.torch_threads)], ["--runtime", setup.runtime], ["--workers", str(setup.processes)]]
    if MULTI_PROCESS not in args.server_flags:
        options.pop()  # an older server: one process, and a --workers it may refuse
    if collect is not None:
        options += [["--collect-uri", str(collect[0])], ["--collect-fraction", f"{collect[1]:g}"], ["--collect-images-fraction", "0"]]
    return options


def left_out(args: argparse.Namespace) -> list[str]:
    """The benchmark's server flags that one of the two versions does not accept (passed to neither)."""
    flags = {option[0] for batching in (True, False) for option in server_options(Path(), Setup("torch", 1, batching), args, 0)}
    return sorted(flags - args.server_flags)


def help_flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", text))


def server_flags(server_repo: Path) -> set[str]:
    """The flags both this checkout's server and ``server_repo``'s accept, so a before/after pair of runs
    passes both servers the same command line."""
    from serving.__main__ import build_parser

    flags = help_flags(build_parser().format_help()) | {MULTI_PROCESS}
    if server_repo == REPO:
        return flags
    run = subprocess.run([sys.executable, "-m", "serving", "--help"], cwd=server_repo, env=server_env(server_repo),
                         capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        sys.exit(f"python -m serving --help failed in {server_repo}:\n{run.stderr[-3000:]}")
    return flags & (help_flags(run.stdout) | ({MULTI_PROCESS} if "--workers auto|N" in run.stdout else set()))


def server_env(server_repo: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(server_repo)}


def server_source(server_repo: Path) -> str:
    """Where the server's code comes from, checked: the venv's editable install of this checkout must not
    shadow the other one (then both runs would measure the same code). Its commit, '+changes' if dirty."""
    run = subprocess.run([sys.executable, "-c", "import serving; print(serving.__file__)"], cwd=server_repo, env=server_env(server_repo),
                         capture_output=True, text=True, timeout=60, check=True)
    found = Path(run.stdout.strip()).resolve()
    if not found.is_relative_to(server_repo):
        sys.exit(f"expected the server's code under {server_repo}, found {found}")
    git = ["git", "-C", str(server_repo)]
    commit = subprocess.run([*git, "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip() or "not a git checkout"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "serving", "components"], capture_output=True, text=True).stdout.strip()
    return f"{server_repo} at {commit}{'+changes' if dirty else ''}"


def start_server(folder: Path, setup: Setup, args: argparse.Namespace, log: Path,
                 collect: tuple[Path, float] | None = None, entry: tuple[str, ...] = ("-m", "serving")) -> tuple[subprocess.Popen, str]:
    """``entry``: what runs the server, with the options after it (``benchmarks/http_floor.py MODE``: the floor)."""
    port = free_port()
    options = [word for option in server_options(folder, setup, args, port, collect) if option[0] in args.server_flags
               for word in option]
    command = [*taskset(placement(args.pin, setup.processes).server), sys.executable, *entry, *options]
    with open(log, "wb") as output:
        proc = subprocess.Popen(command, cwd=args.server_repo, stdout=output, stderr=subprocess.STDOUT, env=server_env(args.server_repo))
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


# wrk's Lua hooks: POST the body file; done() reports in microseconds as one JSON line after wrk's own text.
# errors.status counts answers with a status of 400 or more (the server sends no 3xx): the non-2xx answers.
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open([==[@BODY@]==], "rb"))
wrk.body = file:read("*a")
file:close()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(url: str, script: Path, concurrency: int, seconds: float, cores: tuple[int, ...] | None) -> dict:
    """One wrk run, closed loop: one thread, one connection per concurrent client; done()'s JSON line."""
    command = [*taskset(cores), "wrk", "-t1", f"-c{concurrency}", f"-d{math.ceil(seconds)}s", "--timeout", "60s", "-s", str(script), url]
    run = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=True)
    return json.loads(next(line for line in reversed(run.stdout.splitlines()) if line.startswith("{")))


def drive_wrk(url: str, path: str, body_file: Path, concurrency: int, args: argparse.Namespace, cores: tuple[int, ...] | None) -> dict:
    """The warm-up is a wrk run of its own (wrk cannot leave its first seconds out of its statistics)."""
    script = body_file.with_suffix(".lua")
    script.write_text(WRK_SCRIPT.replace("@BODY@", str(body_file)))
    warm = wrk(f"{url}{path}", script, concurrency, args.warmup, cores) if args.warmup > 0 else {"requests": 0}
    r = wrk(f"{url}{path}", script, concurrency, args.seconds, cores)
    us_per_ms = 1000 if r["requests"] else float("nan")  # no answers: no percentiles (wrk says 0)
    return {"requests": r["requests"], "sent": warm["requests"] + r["requests"], "errors": r["non_2xx"] + r["socket_errors"],
            "rps": r["requests"] / (r["duration_us"] / 1e6), "p50": r["p50_us"] / us_per_ms, "p99": r["p99_us"] / us_per_ms}


def drive_aiohttp(url: str, path: str, body_file: Path, concurrency: int, args: argparse.Namespace,
                  cores: tuple[int, ...] | None) -> dict:
    command = [*taskset(cores), sys.executable, __file__, "drive", "--url", url, "--path", path, "--body", str(body_file),
               "--concurrency", str(concurrency), "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds + args.warmup + 120, check=True)
    return json.loads(run.stdout)


def run_load(server: subprocess.Popen, url: str, path: str, body_file: Path, concurrency: int, args: argparse.Namespace,
             load_cores: tuple[int, ...] | None) -> dict:
    """One row's load, plus the server's CPU time per request (user + system, all its processes and threads,
    warm-up included): a machine shared with other work changes requests/s from run to run far more than it."""
    import psutil

    root = psutil.Process(server.pid)
    processes = [root, *root.children(recursive=True)]
    before = sum(cpu_seconds(p) for p in processes)
    result = (drive_wrk if args.driver == "wrk" else drive_aiohttp)(url, path, body_file, concurrency, args, load_cores)
    cpu_s = sum(cpu_seconds(p) for p in processes) - before
    result["cpu_ms"] = 1000 * cpu_s / result["sent"] if result["sent"] else float("nan")
    return result


def cpu_seconds(process) -> float:  # noqa: ANN001 - a psutil.Process
    times = process.cpu_times()
    return times.user + times.system


# -- the table ------------------------------------------------------------------------------------------------


def bench_model(model: Model, args: argparse.Namespace, scratch: Path) -> list[str]:
    folder = make_version(scratch / model.arch, model)
    runtimes, skipped = runtimes_of(folder, [r for r in args.runtimes if r == "torch" or "--runtime" in args.server_flags])
    one_core = placement(args.pin).server
    limits = {r: (raw_throughput(folder, r, 1, args.raw_seconds, args.torch_threads, one_core),
                  raw_throughput(folder, r, args.max_batch_size, args.raw_seconds, args.torch_threads, one_core)) for r in runtimes}
    kinds = requests_for(model)
    for i, kind in enumerate(kinds):
        (scratch / f"{model.arch}-{i}.json").write_bytes(kind.body)
    results = {}
    for setup in setups(runtimes, args):
        results.update(serve_rows(folder, setup, kinds, args, scratch))
    collected = collection_rows(folder, Setup(runtimes[0], 1), kinds, args, scratch) if args.collect else {}
    floors = floor_rows(folder, Setup(runtimes[0], 1), kinds, args, scratch) if model.arch == SMALL.arch and args.server_repo == REPO else {}
    lines = [*skipped, *(f"{model.title}, {r}: limit (in-process forward, one core) batch 1: {b1:,.0f} img/s, "
                         f"batch {args.max_batch_size}: {bmax:,.0f} img/s" for r, (b1, bmax) in limits.items()),
             "| request | runtime | processes | batching | concurrency | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
             "| served/limit(b1) | served/limit(max) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (name, setup, c), r in results.items():
        lines.append(row(name, setup, c, r, limits[setup.runtime], setup.processes))
    for (name, label), runs in collected.items():
        lines.append(row(f"{name}, collect {label} (median of {len(runs)})", Setup(runtimes[0], 1), args.concurrency[-1],
                         median_row(runs), limits[runtimes[0]], 1))
    lines += verdicts(model, kinds, results, limits, args)
    lines += floor_lines(floors, limits, args)
    lines += [collection_verdict(name, label, runs, collected[name, COLLECT_BASE])
              for (name, label), runs in collected.items() if label != COLLECT_BASE]
    return lines


def floor_rows(folder: Path, setup: Setup, kinds: list[Request], args: argparse.Namespace, scratch: Path) -> dict[str, dict]:
    """The v2 request at the highest concurrency against the server with the model's work taken out
    (``benchmarks/http_floor.py``): reading the body only (``http``), and also parsing it and decoding its pixels
    (``parse``)."""
    index, kind = next((i, k) for i, k in enumerate(kinds) if k.path.startswith("/v2/"))
    results = {}
    for mode in FLOOR_MODES:
        entry = (str(Path(__file__).with_name("http_floor.py")), mode)
        proc, url = start_server(folder, setup, args, scratch / f"{folder.name}-floor-{mode}.log", entry=entry)
        try:
            results[mode] = run_load(proc, url, kind.path, scratch / f"{folder.name}-{index}.json", args.concurrency[-1], args,
                                     placement(args.pin).load)
        finally:
            stop_server(proc)
    return results


def floor_lines(floors: dict[str, dict], limits: dict, args: argparse.Namespace) -> list[str]:
    """The floors, and the highest served/limit(max) each leaves a one-core server of each runtime: the forward
    pass's time per image at the maximum batch over that time plus the floor's CPU per request."""
    lines = []
    for mode, r in floors.items():
        what = FLOOR_MODES[mode]
        ceilings = ", ".join(f"{runtime} {ceiling(limit_max, r['cpu_ms']):.2f}" for runtime, (_, limit_max) in limits.items())
        lines.append(f"floor, v2 FP32, 1 process, concurrency {args.concurrency[-1]}: {what}: {r['rps']:,.0f} req/s, "
                     f"server CPU {r['cpu_ms']:.3f} ms/req, errors {r['errors']}; served/limit(max) can be at most {ceilings}")
    return lines


def ceiling(limit_max: float, floor_cpu_ms: float) -> float:
    """served/limit(max) of a one-core server that spends ``floor_cpu_ms`` per request besides a forward pass at
    ``limit_max`` images/s: (1 / (t_forward + t_floor)) / (1 / t_forward)."""
    forward_ms = 1000 / limit_max
    return forward_ms / (forward_ms + floor_cpu_ms)


def setups(runtimes: list[str], args: argparse.Namespace) -> list[Setup]:
    """Each runtime with 1 and N processes, batching on; the first runtime with one process, batching off."""
    counts = [1, *([args.processes] if args.processes > 1 and MULTI_PROCESS in args.server_flags else [])]
    return [*(Setup(r, n) for r in runtimes for n in counts), Setup(runtimes[0], 1, batching=False)]


def serve_rows(folder: Path, setup: Setup, kinds: list[Request], args: argparse.Namespace, scratch: Path) -> dict:
    """Every request kind at every concurrency against one server started as ``setup`` says."""
    results = {}
    load_cores = placement(args.pin, setup.processes).load
    log = scratch / f"{folder.name}-{setup.runtime}-{setup.processes}-{setup.batching}.log"
    proc, url = start_server(folder, setup, args, log)
    try:
        for i, kind in enumerate(kinds):
            for c in args.concurrency:
                results[kind.name, setup, c] = run_load(proc, url, kind.path, scratch / f"{folder.name}-{i}.json", c, args, load_cores)
    finally:
        stop_server(proc)
    return results


def row(name: str, setup: Setup, c: int, r: dict, limit: tuple[float, float], processes: int) -> str:
    """One table row; served/limit against the one-core limit times the processes (each has a core)."""
    limit_1, limit_max = (processes * x for x in limit)
    return (f"| {name} | {setup.runtime} | {setup.processes} | {'on' if setup.batching else 'off'} | {c} | {r['rps']:,.0f} | "
            f"{r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | {r['cpu_ms']:.2f} | {r['rps'] / limit_1:.2f} | {r['rps'] / limit_max:.2f} |")


def collection_rows(folder: Path, setup: Setup, kinds: list[Request], args: argparse.Namespace, scratch: Path) -> dict:
    """Batching on, one process, the highest concurrency, with the server collecting every request (1.0) and a
    tenth (0.1) into a local store, and with collection off (twice: see COLLECT_SERVERS): what collection costs
    the request path. Each of ``--collect-rounds`` rounds starts the servers afresh, side by side on the server's
    core (idle but the one measured), and they take turns row by row. Both matter on a shared machine: its speed
    drifts over tens of seconds, which turns of a few seconds share out evenly, and one server process can run
    slower than the next for its whole life, which fresh processes per round even out (the A/A ratio shows what
    is left). Returns, per (request kind, server label), each round's result."""
    rounds: dict[tuple[str, str], list[dict]] = {(kind.name, label): [] for kind in kinds for label in COLLECT_SERVERS}
    for r in range(args.collect_rounds):
        for key, result in collection_round(folder, setup, kinds, args, scratch / f"round-{r}", r).items():
            rounds[key].append(result)
    return rounds


def collection_round(folder: Path, setup: Setup, kinds: list[Request], args: argparse.Namespace, scratch: Path,
                     turn: int) -> dict[tuple[str, str], dict]:
    """One round: the servers started side by side, each request kind's row from each in turn (their order
    rotating with ``turn``), then stopped (SIGTERM: a collecting server writes what is still queued)."""
    scratch.mkdir(parents=True, exist_ok=True)
    labels = list(COLLECT_SERVERS)
    labels = labels[turn % len(labels):] + labels[:turn % len(labels)]
    stores = {label: scratch / f"collected-{folder.name}-{i}" for i, label in enumerate(labels) if COLLECT_SERVERS[label]}
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    results = {}
    try:
        for i, label in enumerate(labels):
            collect = (stores[label], COLLECT_SERVERS[label]) if label in stores else None
            servers[label] = start_server(folder, setup, args, scratch / f"{folder.name}-collect-{i}.log", collect)
        for k, kind in enumerate(kinds):
            body = scratch.parent / f"{folder.name}-{k}.json"
            for label in labels:
                proc, url = servers[label]
                results[kind.name, label] = run_load(proc, url, kind.path, body, args.concurrency[-1], args, placement(args.pin).load)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    for store in stores.values():
        if not any(store.rglob("*.jsonl")):
            raise RuntimeError(f"expected collected records under {store}, found none: see the server log")
    return results


def median_row(results: list[dict]) -> dict:
    """Each figure's median over the rounds (errors: their sum, so none is hidden)."""
    merged = {key: float(np.median([r[key] for r in results])) for key in results[0] if key != "errors"}
    return {**merged, "errors": sum(r["errors"] for r in results)}


def collection_verdict(name: str, label: str, server: list[dict], base: list[dict]) -> str:
    """The monitoring issue's target: with collection, req/s and p99 within 10% of the same row without it. Each
    ratio is the median of the rounds' ratios (the servers of one round shared the machine's same moments)."""
    def ratio(figure: str) -> float:
        return float(np.median([on[figure] / off[figure] for on, off in zip(server, base, strict=True)]))

    rps, p99 = ratio("rps"), ratio("p99")
    rounds = f"errors {sum(r['errors'] for r in server)} (median of {len(server)} rounds' ratios)"
    if COLLECT_SERVERS[label] == 0:
        return f"{name}, a second server, collection off (A/A, the method's noise): req/s {rps:.2f}x, p99 {p99:.2f}x, {rounds}"
    return f"{name}, collect {label}: req/s {rps:.2f}x of collection off (target >= 0.90), p99 {p99:.2f}x (target <= 1.10), {rounds}"


def verdicts(model: Model, kinds: list[Request], results: dict, limits: dict, args: argparse.Namespace) -> list[str]:
    """The issue's targets at the highest concurrency: per runtime and request kind for one process (CPU per
    request, served/limit, p99, errors), N processes against one, onnx against torch at batch 1."""
    c, lines = args.concurrency[-1], []
    runtimes = list(limits)
    for runtime in runtimes:
        for kind in kinds:
            one = results[kind.name, Setup(runtime, 1), c]
            served = one["rps"] / limits[runtime][1]
            if model.arch != SMALL.arch:
                lines.append(f"{kind.name}, {runtime}, concurrency {c}: served/limit(max) = {served:.2f} (target >= 0.70 on a GPU), "
                             f"errors {one['errors']}")
                continue
            lines.append(f"{kind.name}, {runtime}, 1 process, concurrency {c}: server CPU {one['cpu_ms']:.2f} ms/req (target <= 0.45), "
                         f"served/limit(max) {served:.2f} (target >= 0.6), p99 {one['p99']:.1f} ms (target < 100), errors {one['errors']} (target 0)")
            many = results.get((kind.name, Setup(runtime, args.processes), c))
            if many is not None:
                lines.append(f"{kind.name}, {runtime}, {args.processes} processes on {args.processes} cores (the load generator on them too): "
                             f"{many['rps'] / one['rps']:.2f}x the req/s of 1 (target >= 1.7), p99 {many['p99']:.1f} ms, errors {many['errors']}")
    off = {kind.name: results[kind.name, Setup(runtimes[0], 1, batching=False), c] for kind in kinds}
    lines += [f"{name}, {runtimes[0]}, 1 process, concurrency {c}: batching on/off = "
              f"{results[name, Setup(runtimes[0], 1), c]['rps'] / r['rps']:.2f}x (target >= 2x), errors off {r['errors']}" for name, r in off.items()]
    if "onnx" in limits and "torch" in limits:
        lines.append(f"forward at batch 1: onnx {limits['onnx'][0] / limits['torch'][0]:.2f}x torch (target >= 1.5); "
                     f"at batch {args.max_batch_size}: {limits['onnx'][1] / limits['torch'][1]:.2f}x")
    return lines


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
    parser.add_argument("--driver", choices=("wrk", "aiohttp"), help="load generator (default: wrk where it is installed, else aiohttp)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave the server and the load on whatever cores the OS picks")
    parser.add_argument("--collect", action="store_true",
                        help="add rows with request collection on (fractions 1.0 and 0.1) and off, taking turns (batching on, highest concurrency)")
    parser.add_argument("--collect-rounds", type=int, default=3, help="rounds of the collection rows (each row: the median)")
    parser.add_argument("--server-repo", type=Path, default=REPO, help="run the server from this checkout of the repository (before/after)")
    parser.add_argument("--runtimes", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"], help="runtimes to measure")
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)),
                        help="server processes of the multi-process rows (default: the CPUs this benchmark may use; 1: none)")
    args = parser.parse_args(argv)
    if args.mode == "drive":
        print(json.dumps(asyncio.run(drive(args.url, args.body.read_bytes(), args.concurrency, args.seconds, args.warmup, args.path))))
        return
    run_benchmark(args)


def choose_driver(asked: str | None) -> str:
    if asked == "aiohttp" or (asked is None and shutil.which("wrk") is None):
        if asked is None:
            print("serve_load: wrk is not installed (apt-get install wrk): the load comes from aiohttp, in Python")
        return "aiohttp"
    if shutil.which("wrk") is None:
        sys.exit("expected wrk on PATH for --driver wrk (apt-get install wrk)")
    return "wrk"


def run_benchmark(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import torch

    from serving.__main__ import default_torch_threads

    load_at_start = load_average()
    args.server_repo = args.server_repo.resolve()
    if not (args.server_repo / "serving" / "__main__.py").is_file():
        sys.exit(f"expected a checkout of this repository at {args.server_repo} (serving/__main__.py)")
    args.driver = choose_driver(args.driver)
    if args.driver == "wrk":  # wrk runs whole seconds: say what was measured
        args.seconds, args.warmup = float(max(1, math.ceil(args.seconds))), float(math.ceil(args.warmup))
    args.placement = placement(args.pin)
    # What the server would pick on its own cores; both versions get it explicitly (see server_options).
    with pinned(args.placement.server):
        args.torch_threads = default_torch_threads()
    args.server_flags = server_flags(args.server_repo)
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores, torch threads {args.torch_threads})"
    models = [SMALL, *([RESNET] if gpu or args.resnet else [])]
    many = placement(args.pin, args.processes)
    lines = [f"serve_load: {device}; server: {server_source(args.server_repo)}, --max-batch-size {args.max_batch_size} "
             f"--max-batch-wait-ms {args.max_batch_wait_ms:g} --torch-threads {args.torch_threads} (per process), other settings "
             f"the server's defaults; single-image requests, closed loop, {args.seconds:g} s per row after {args.warmup:g} s warm-up, "
             f"load from a separate process ({args.driver})",
             f"cores: 1 server process on {cores_text(args.placement.server)}, load generator on {cores_text(args.placement.load)}"
             f"{'' if args.placement.server else ' (--no-pin, one CPU or no taskset)'}; {args.processes} server processes on "
             f"{cores_text(many.server)}, load generator on {cores_text(many.load)}"
             f"{' (the same cores: it takes CPU from the server)' if many.server and many.load and set(many.load) <= set(many.server) else ''}; "
             f"1-minute load average at start {load_at_start:.2f}"]
    if left_out(args):
        lines.append(f"server flags left out (one of the two versions does not accept them): {' '.join(left_out(args))}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        for model in models:
            lines += ["", *bench_model(model, args, Path(scratch))]
    lines.append(f"\n(total {time.monotonic() - started:.0f} s; 1-minute load average {load_at_start:.2f} at start, {load_average():.2f} at end)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
