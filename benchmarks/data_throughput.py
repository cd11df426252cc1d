"""Data throughput: preparation and the training input against plain torchvision, on synthetic image folders.

    .venv/bin/python benchmarks/data_throughput.py [--n 10000] [--azurite-n N] [--latency-ms 5] [--rounds 2]

Prints one Markdown table from one run. The data is generated afresh into a temporary folder (removed
at the end; nothing is cached between runs), in two kinds and at two sizes, N and 10·N images:

- ``photos``: an ImageFolder of RGB JPEGs of mixed sizes (each side 48–160 px), 10 learnable classes
  (a hue and a stripe orientation per class, plus noise), prepared with ``image_size=64``;
- ``digits``: an ImageFolder of 28×28 grayscale PNGs (the class's digit drawn with a random offset and
  tilt, plus noise), prepared at their native size (``image_size=0``).

Rows, each measured in its own child process (this script's ``child`` mode), so that peak RSS
(``VmHWM`` of ``/proc/PID/status``, read just before the child exits) is per process:

1. ``prepare (local)``: :func:`components.data.prepare.prepare` from the local folder into a fresh
   local store; images/s over the whole call, against one torchvision pass over the raw folder
   (``ImageFolder`` with the eval transform, ``DataLoader(batch_size=256, num_workers=2)``, from
   constructing the data set to the last batch); and the peak RSS of the preparing process and of its
   largest decode process (its ``VmHWM``, sampled while it runs), N vs 10·N.
2. ``training input``: :func:`components.training.input.train_batches` over one epoch of the prepared
   training split (batch 64, ``loader_workers=2``, augmentation ``auto``), against torchvision over the
   raw folder with the same augmentation (``num_workers=2``, batch 64, shuffled). Both are steady state:
   images/s from the first batch to the last (the time to the first batch, loader start-up included, is
   in the notes). Peak RSS of the iterating process (the training worker) and of its loader processes
   (the largest), N vs 10·N, read while the loaders are still alive.
3. ``prepare (Azurite)``: the N photos (``--azurite-n``) are uploaded to a local Azurite
   (``node_modules/.bin/azurite-blob``, started here with the emulator's well-known account key)
   through the project's store (its ``upload_file``, with the SHA-256 metadata its reads check, 16
   threads; not timed), then prepared from that URI into another container, against a plain download
   of the same blobs with the azure-storage-blob SDK (``list_blobs`` + ``ThreadPoolExecutor(16)`` of
   ``download_blob().readall()``). With ``--latency-ms L`` (default 5; 0: skipped) the same pair again
   through a loopback proxy (``tests/flaky_proxy.py``, faults off, in its own process) that holds every
   request ``L`` ms before forwarding it: a simulated round trip to a remote account.

Each pair (ours and its baseline) runs ``--rounds`` times (default 2), alternating, and each side keeps
its fastest run and its highest peak RSS: single runs of a few seconds on a shared 2-core machine drift by
tens of percent, and noise only ever slows a run down.

The targets printed beside each ratio are the ones the data pipeline was written to: prepare at least
0.8× one torchvision pass, the training input at least as fast as torchvision's, peak RSS growing at
most 1.25× from N to 10·N images, prepare from Blob at least 0.8× a plain parallel download. The
machine's load average (before and after) and CPU count are printed with the table: on a machine
shared with other work, compare the rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
CLASSES = 10
SEED = 20240601
GENERATE_CHUNK = 500  # images per task of the generating pool
GENERATE_PROCESSES = 2
RESULT_MARK = "RESULT "
# Azurite's published development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite):
# a well-known constant, not a secret.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFMTBjNVKFe2ITBJQ=="
CONNECTION_ENV = "AZURE_STORAGE_CONNECTION_STRING"
DOWNLOAD_THREADS = 16
TARGETS = {"prepare": 0.8, "input": 1.0, "rss": 1.25, "blob": 0.8}


@dataclass(frozen=True)
class Kind:
    """One kind of synthetic data: how its files look and how it is prepared."""

    name: str
    suffix: str
    image_size: int  # PrepareConfig.image_size: 0 keeps the native size


PHOTOS = Kind("photos", ".jpg", 64)
DIGITS = Kind("digits", ".png", 0)
KINDS = {k.name: k for k in (PHOTOS, DIGITS)}


@dataclass(frozen=True)
class Run:
    """What one measuring child reports: images over seconds, and peak RSS."""

    images: int
    seconds: float
    rss_mib: float
    children_rss_mib: float = 0.0
    startup_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.images and self.seconds > 0 else float("nan")


# -- synthetic data ---------------------------------------------------------------------------------------


def class_name(kind: Kind, label: int) -> str:
    return str(label) if kind is DIGITS else f"class{label}"


@functools.lru_cache(maxsize=1)
def class_colours() -> np.ndarray:
    """One saturated colour per class, evenly spaced in hue (float32 [CLASSES, 3], 0–255)."""
    hues = Image.new("HSV", (CLASSES, 1))
    hues.putdata([(int(256 * c / CLASSES), 200, 230) for c in range(CLASSES)])
    return np.asarray(hues.convert("RGB"), dtype=np.float32)[0]


@functools.lru_cache(maxsize=1)
def noise_tile() -> np.ndarray:
    """A fixed tile of Gaussian noise (int16 [256, 256, 3]); images take random crops of it."""
    return np.random.default_rng(SEED).normal(0, 18, (256, 256, 3)).astype(np.int16)


@functools.lru_cache(maxsize=1)
def digit_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=22)


def noise(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    tile = noise_tile()
    top, left = rng.integers(0, tile.shape[0] - height + 1), rng.integers(0, tile.shape[1] - width + 1)
    return tile[top : top + height, left : left + width, :channels]


def photo(rng: np.random.Generator, label: int) -> Image.Image:
    """A mixed-size RGB image: the class's colour in stripes at the class's angle, with noise."""
    width, height = (int(s) for s in rng.integers(48, 161, size=2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = label * np.pi / CLASSES + rng.normal(0, 0.08)
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / rng.uniform(8, 16)) + rng.uniform(0, 2 * np.pi)
    shade = 0.65 + 0.35 * np.sin(phase)
    pixels = class_colours()[label] * rng.uniform(0.75, 1.0) * shade[..., None] + noise(rng, height, width, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def digit(rng: np.random.Generator, label: int) -> Image.Image:
    """A 28×28 grayscale image of the class's digit, shifted and tilted at random, with noise."""
    image = Image.new("L", (28, 28), 0)
    dx, dy = (int(d) for d in rng.integers(-3, 4, size=2))
    ImageDraw.Draw(image).text((14 + dx, 14 + dy), str(label), fill=int(rng.integers(170, 256)), font=digit_font(), anchor="mm")
    image = image.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.int16) + noise(rng, 28, 28, 1)[..., 0] // 2
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def write_chunk(task: tuple[str, str, int, int]) -> int:
    """Write images ``start`` to ``stop`` of a folder (a task of the generating pool); return how many."""
    folder, kind_name, start, stop = task
    kind = KINDS[kind_name]
    rng = np.random.default_rng([SEED, len(kind_name), start])
    for index in range(start, stop):
        label = index % CLASSES
        path = Path(folder) / class_name(kind, label) / f"{index:07d}{kind.suffix}"
        if kind is PHOTOS:
            photo(rng, label).save(path, quality=85)
        else:
            digit(rng, label).save(path)
    return stop - start


def generate(folder: Path, kind: Kind, count: int, pool: multiprocessing.pool.Pool) -> Path:
    """An ImageFolder of ``count`` images of ``kind`` (classes in turn) in ``folder``, written by ``pool``."""
    for label in range(CLASSES):
        (folder / class_name(kind, label)).mkdir(parents=True, exist_ok=True)
    tasks = [(str(folder), kind.name, start, min(start + GENERATE_CHUNK, count)) for start in range(0, count, GENERATE_CHUNK)]
    written = sum(pool.imap_unordered(write_chunk, tasks))
    assert written == count, (written, count)
    return folder


# -- measurements, each in a child process ----------------------------------------------------------------


def peak_rss_mib(pid: int | str = "self") -> float:
    """``VmHWM`` (the peak resident set) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def children_peak_rss_mib() -> float:
    """The largest peak RSS among this process's live multiprocessing children (DataLoader workers)."""
    peaks = []
    for child in multiprocessing.active_children():
        try:
            peaks.append(peak_rss_mib(child.pid))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return max(peaks, default=0.0)


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its children that have been waited for."""
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


def timed_batches(batches: Iterator[tuple], count: int | None = None) -> dict:
    """Consume ``count`` batches (all when ``None``): time to the first, then images/s after it."""
    started = time.perf_counter()
    first, images, shape = None, 0, None
    for x, y in islice(batches, count):
        if first is None:
            first, shape = time.perf_counter(), list(x.shape)
            continue
        images += len(y)
    if first is None:
        raise RuntimeError("expected at least one batch, got none")
    return {"startup_s": first - started, "seconds": time.perf_counter() - first, "images": images, "extra": {"batch_shape": shape}}


def child_prepare(raw: str, out: str, image_size: int) -> dict:
    """Prepare ``raw`` into the fresh store ``out``; the whole call is timed."""
    from components.data.prepare import PrepareConfig, prepare
    from components.store import open_store

    started, cpu = time.perf_counter(), cpu_seconds()
    with ChildrenPeak() as decoders:
        info = prepare(open_store(raw), open_store(out), PrepareConfig(image_size=image_size))
    seconds = time.perf_counter() - started
    extra = {"prefix": info.prefix, "shape": info.image_shape, "cpu_s": cpu_seconds() - cpu}
    return {"images": sum(info.counts.values()), "seconds": seconds, "extra": extra, "children_rss_mib": decoders.peak}


class ChildrenPeak:
    """The largest peak RSS of this process's live children (the decode processes), sampled every 0.2 s while
    the block runs. Not ``ru_maxrss`` of the reaped children: Linux charges a spawned child with its
    parent's RSS at the moment of the fork, before the exec, so that would report the parent's size."""

    def __init__(self) -> None:
        self.peak, self._done = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ChildrenPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self.peak = max(self.peak, children_peak_rss_mib())


def torchvision_transform(kind_name: str, train: bool):
    """The eval (``train=False``) or training transform torchvision would use for ``kind_name``."""
    from torchvision import transforms as T

    if kind_name == PHOTOS.name:
        if train:
            return T.Compose([T.RandomResizedCrop(64, scale=(0.35, 1.0)), T.RandomHorizontalFlip(), T.PILToTensor()])
        return T.Compose([T.Resize(64), T.CenterCrop(64), T.PILToTensor()])
    if train:
        return T.Compose([T.Grayscale(1), T.RandomAffine(0, translate=(2 / 28, 2 / 28)), T.PILToTensor()])
    return T.Compose([T.Grayscale(1), T.PILToTensor()])


def child_torchvision(raw: str, kind: str, train: bool) -> dict:
    """One torchvision pass over ``raw``: eval (batch 256, whole call timed) or training (batch 64, steady state)."""
    import torch
    from torchvision.datasets import ImageFolder

    started, cpu = time.perf_counter(), cpu_seconds()
    dataset = ImageFolder(raw, transform=torchvision_transform(kind, train))
    loader = torch.utils.data.DataLoader(dataset, batch_size=64 if train else 256, shuffle=train, num_workers=2)
    if train:
        return timed_batches(iter(loader))
    images = sum(len(y) for _, y in loader)  # exhausted: the loader processes have exited and been waited for
    return {"images": images, "seconds": time.perf_counter() - started, "extra": {"cpu_s": cpu_seconds() - cpu}}


def child_input(store_uri: str, prefix: str) -> dict:
    """One epoch of the training input of worker 0 of 1 (``loader_workers=2``), steady state."""
    from components.data.prepare import read_info
    from components.store import open_store
    from components.training.config import TrainConfig
    from components.training.input import steps_per_epoch, train_batches

    store = open_store(store_uri)
    info = read_info(store, prefix)
    config = TrainConfig(store_uri=store_uri, dataset_prefix=prefix, output_prefix="bench", epochs=1, batch_size=64,
                         num_workers=1, loader_workers=2, augment="auto")
    steps = steps_per_epoch(info.counts["train"], config)
    batches = train_batches(store, info, config, 0)
    try:
        result = timed_batches(batches, steps)
        result["children_rss_mib"] = children_peak_rss_mib()  # the loaders persist until the generator closes
    finally:
        batches.close()
    return result


def child_download(uri: str) -> dict:
    """A plain download of every blob under ``uri`` with the SDK: list, then 16 threads of ``readall``."""
    from concurrent.futures import ThreadPoolExecutor

    from azure.storage.blob import ContainerClient

    container, _, prefix = uri.split("/", 4)[4].partition("/")
    client = ContainerClient.from_connection_string(os.environ[CONNECTION_ENV], container)
    started = time.perf_counter()
    names = [blob.name for blob in client.list_blobs(name_starts_with=prefix or None)]
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        sizes = list(pool.map(lambda name: len(client.download_blob(name).readall()), names))
    return {"images": len(sizes), "seconds": time.perf_counter() - started, "extra": {"bytes": sum(sizes)}}


def child_imports() -> dict:
    """Nothing but the imports of the measured code: the floor under every peak RSS in the table."""
    import components.data.prepare  # noqa: F401
    import components.training.input  # noqa: F401

    return {"images": 0, "seconds": 0.0}


CHILDREN: dict[str, Callable[..., dict]] = {
    "prepare": child_prepare, "torchvision": child_torchvision, "input": child_input, "download": child_download,
    "imports": child_imports,
}


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_child(name: str, **kwargs) -> Run:
    """Run one measurement in a fresh Python process; return what it reports."""
    command = [sys.executable, __file__, "child", name, json.dumps(kwargs)]
    progress(f"{name} {kwargs}")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith(RESULT_MARK))
    return Run(**json.loads(line[len(RESULT_MARK) :]))


def child_main(name: str, kwargs: str) -> None:
    result = CHILDREN[name](**json.loads(kwargs))
    result.setdefault("children_rss_mib", children_peak_rss_mib())
    result["rss_mib"] = peak_rss_mib()
    print(RESULT_MARK + json.dumps(result), flush=True)


# -- Azurite and a delaying proxy -------------------------------------------------------------------------


def connection_string(endpoint: str) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"


def start_azurite(workdir: Path) -> tuple[subprocess.Popen, str]:
    """Azurite on a free loopback port with the well-known key (as ``tests/azurite.py`` starts it); its endpoint."""
    from tests.azurite import ACCOUNT, AZURITE_BIN
    from tests.azurite import start_azurite as start

    if not AZURITE_BIN.exists():
        raise SystemExit(f"expected Azurite at {AZURITE_BIN}: run `make setup` (npm ci), or pass --azurite-n 0")
    workdir.mkdir(parents=True, exist_ok=True)
    process, port = start(workdir, AZURITE_KEY)
    return process, f"http://127.0.0.1:{port}/{ACCOUNT}"


def stop(process: subprocess.Popen | multiprocessing.Process) -> None:
    process.terminate()
    if isinstance(process, subprocess.Popen):
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    else:
        process.join(10)


def upload(folder: Path, uri: str) -> float:
    """Put every file of ``folder`` under ``uri`` through the project's store (16 threads); the seconds it took."""
    from concurrent.futures import ThreadPoolExecutor

    from components.store import open_store

    store = open_store(uri)
    store.ensure_root()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    started = time.perf_counter()
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        list(pool.map(lambda p: store.upload_file(p.relative_to(folder).as_posix(), p), files))
    return time.perf_counter() - started


def serve_delayed(upstream: str, delay_s: float, ports: multiprocessing.Queue) -> None:
    """The proxy of ``tests/flaky_proxy.py`` (no faults), holding every request ``delay_s`` before forwarding it."""
    from http.server import ThreadingHTTPServer

    from tests.flaky_proxy import Faults, handler_for

    base = handler_for(upstream, Faults())

    class Delayed(base):
        def _relay(self) -> None:
            time.sleep(delay_s)
            base._relay(self)

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Delayed)
    server.daemon_threads = True
    ports.put(server.server_address[1])
    server.serve_forever()


def start_proxy(endpoint: str, delay_ms: float) -> tuple[multiprocessing.Process, str]:
    """A delaying proxy in front of Azurite at ``endpoint``, in its own process; the proxied endpoint."""
    upstream, account = endpoint.rsplit("/", 1)
    context = multiprocessing.get_context("fork")
    ports = context.Queue()
    process = context.Process(target=serve_delayed, args=(upstream, delay_ms / 1000, ports), daemon=True)
    process.start()
    return process, f"http://127.0.0.1:{ports.get(timeout=30)}/{account}"


# -- the table --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: our throughput against the baseline's, with peak RSS."""

    what: str
    kind: str
    images: int
    ours: Run
    baseline: Run
    target: float
    rss: str = ""
    rss_ratio: str = ""
    notes: str = ""

    def cells(self) -> list[str]:
        ratio = self.ours.rate / self.baseline.rate
        verdict = " ✓" if ratio >= self.target else " ✗"
        return [self.what, self.kind, f"{self.images:,}", f"{self.ours.rate:,.0f}", f"{self.baseline.rate:,.0f}",
                f"{ratio:.2f}{verdict}", f"≥ {self.target:g}", self.rss, self.rss_ratio, self.notes]


HEADER = ["row", "data", "images", "ours img/s", "baseline img/s", "ours/baseline", "target", "peak RSS MiB",
          "RSS 10N/N (≤ 1.25)", "notes"]
ALIGN = ["---", "---", "---:", "---:", "---:", "---:", "---", "---:", "---:", "---"]


def cores(run: Run) -> str:
    """How many cores a run kept busy on average (its CPU time over its wall time)."""
    return f"{run.extra['cpu_s'] / run.seconds:.2f}"


def rss_ratio(small: float, large: float) -> str:
    if not small:  # no such process at N (the data set was too small for decode processes)
        return "n/a"
    ratio = large / small
    return f"{ratio:.2f}{' ✓' if ratio <= TARGETS['rss'] else ' ✗'}"


def best_of(runs: list[Run]) -> Run:
    """The fastest of repeated runs (noise on a shared machine only ever slows a run down), with the highest
    peak RSS among them (luck does not make memory smaller)."""
    fastest = max(runs, key=lambda r: r.rate)
    return replace(fastest, rss_mib=max(r.rss_mib for r in runs), children_rss_mib=max(r.children_rss_mib for r in runs))


def paired(ours: Callable[[int], Run], baseline: Callable[[], Run], rounds: int) -> tuple[Run, Run]:
    """``rounds`` alternating runs of ours (given the round) and the baseline, the best of each: a ratio of two
    runs next to each other in time, each the better of ``rounds``, drifts less than one of single runs."""
    mine, theirs = [], []
    for k in range(rounds):
        mine.append(ours(k))
        theirs.append(baseline())
    return best_of(mine), best_of(theirs)


def measure_local(kind: Kind, raw: Path, scratch: Path, rounds: int = 1) -> dict[str, Run]:
    """The four local measurements of one folder: prepare, a torchvision eval pass, the training input, torchvision
    training; each pair ``rounds`` times, alternating (every prepare into a fresh store: a second one would reuse)."""
    out = scratch / f"prepared-{raw.name}"
    prepared, eval_pass = paired(lambda k: run_child("prepare", raw=str(raw), out=f"{out}-{k}", image_size=kind.image_size),
                                 lambda: run_child("torchvision", raw=str(raw), kind=kind.name, train=False), rounds)
    stream, train_pass = paired(lambda k: run_child("input", store_uri=f"{out}-0", prefix=prepared.extra["prefix"]),
                                lambda: run_child("torchvision", raw=str(raw), kind=kind.name, train=True), rounds)
    return {"prepare": prepared, "eval": eval_pass, "input": stream, "train": train_pass}


def local_rows(kind: Kind, folders: dict[int, Path], scratch: Path, rounds: int) -> list[Row]:
    """Rows 1 and 2 for one kind at both sizes; the RSS ratios on the 10·N rows."""
    runs = {count: measure_local(kind, raw, scratch, rounds) for count, raw in folders.items()}
    small, large = sorted(folders)
    rows: list[Row] = []
    for count in (small, large):
        p, i, t, first = runs[count]["prepare"], runs[count]["input"], runs[count]["train"], runs[small]
        prepare_ratios = f"{rss_ratio(first['prepare'].rss_mib, p.rss_mib)} / {rss_ratio(first['prepare'].children_rss_mib, p.children_rss_mib)}"
        rows.append(Row("1 prepare (local)", kind.name, count, p, runs[count]["eval"], TARGETS["prepare"],
                        f"prepare {p.rss_mib:,.0f} / decoder {p.children_rss_mib:,.0f}", prepare_ratios if count == large else "",
                        f"shape {'x'.join(map(str, p.extra['shape']))}; baseline: one torchvision eval pass; "
                        f"CPU cores busy: prepare {cores(p)}, torchvision {cores(runs[count]['eval'])}"))
        ratios = f"{rss_ratio(first['input'].rss_mib, i.rss_mib)} / {rss_ratio(first['input'].children_rss_mib, i.children_rss_mib)}"
        rows.append(Row("2 training input", kind.name, count, i, t, TARGETS["input"],
                        f"worker {i.rss_mib:,.0f} / loader {i.children_rss_mib:,.0f}", ratios if count == large else "",
                        f"train split, 1 epoch, batch {i.extra['batch_shape']}; first batch after {i.startup_s:.1f} s "
                        f"(torchvision {t.startup_s:.1f} s)"))
    return rows


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serving_cpu(measure: Callable[[], Run], server: int) -> Run:
    """``measure``, with the CPU seconds the Blob server (Azurite, one Node thread) spent meanwhile in its extra."""
    before = process_cpu_s(server)
    run = measure()
    run.extra["server_cpu_s"] = process_cpu_s(server) - before
    return run


def blob_row(label: str, base: str, out: str, count: int, rounds: int, server: int) -> Row:
    """One row 3: prepare from the raw container under ``base`` into ``out``, against a plain download of it;
    with what each cost Azurite: where prepare also writes its shards to Azurite, the server does more work."""
    prepared, download = paired(
        lambda k: serving_cpu(lambda: run_child("prepare", raw=f"{base}/raw", out=f"{out}-{k}", image_size=PHOTOS.image_size), server),
        lambda: serving_cpu(lambda: run_child("download", uri=f"{base}/raw"), server), rounds)
    return Row(f"3 prepare ({label})", PHOTOS.name, count, prepared, download, TARGETS["blob"],
               f"prepare {prepared.rss_mib:,.0f} / decoder {prepared.children_rss_mib:,.0f}", "",
               f"baseline: SDK list + {DOWNLOAD_THREADS}-thread download of {download.extra['bytes'] / 2**20:.0f} MiB; "
               f"CPU cores busy: prepare {cores(prepared)}; Azurite CPU s: prepare {prepared.extra['server_cpu_s']:.1f}, "
               f"download {download.extra['server_cpu_s']:.1f}")


def blob_rows(folder: Path, count: int, latency_ms: float, scratch: Path, rounds: int) -> tuple[list[Row], str]:
    """Row 3: prepare from Azurite (into Azurite, and into a local folder) against a plain SDK download,
    directly and through a delaying proxy."""
    azurite, endpoint = start_azurite(scratch / "azurite")
    proxy = None
    try:
        os.environ[CONNECTION_ENV] = connection_string(endpoint)
        upload_s = upload(folder, f"{endpoint}/raw")
        rows = [blob_row("Azurite → Azurite", endpoint, f"{endpoint}/prepared", count, rounds, azurite.pid),
                blob_row("Azurite → local", endpoint, str(scratch / "prepared-from-azurite"), count, rounds, azurite.pid)]
        if latency_ms > 0:
            proxy, proxied = start_proxy(endpoint, latency_ms)
            os.environ[CONNECTION_ENV] = connection_string(proxied)
            rows.append(blob_row(f"Azurite +{latency_ms:g} ms → Azurite", proxied, f"{proxied}/prepared-delayed", count, rounds,
                                 azurite.pid))
    finally:
        if proxy is not None:
            stop(proxy)
        stop(azurite)
        os.environ.pop(CONNECTION_ENV, None)
    return rows, f"uploaded {count:,} photos to Azurite in {upload_s:.0f} s (not timed in the rows)"


def table(rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(ALIGN) + "|"]
    return lines + ["| " + " | ".join(row.cells()) + " |" for row in rows]


def load() -> str:
    return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (1/5/15 min), {os.cpu_count()} CPUs"


def run_benchmark(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    started, before = time.monotonic(), load()
    sizes = (args.n, 10 * args.n)
    with tempfile.TemporaryDirectory(prefix="data-throughput-") as tmp:
        scratch = Path(tmp)
        generate_started = time.monotonic()
        with multiprocessing.get_context("fork").Pool(GENERATE_PROCESSES) as pool:
            folders = {k: {n: generate(scratch / f"raw-{k.name}-{n}", k, n, pool) for n in sizes} for k in (PHOTOS, DIGITS)}
            azurite_folder = folders[PHOTOS].get(args.azurite_n)
            if args.azurite_n and azurite_folder is None:
                azurite_folder = generate(scratch / f"raw-photos-{args.azurite_n}", PHOTOS, args.azurite_n, pool)
        total = 2 * sum(sizes) + (args.azurite_n if args.azurite_n not in sizes else 0)
        generated = f"generated {total:,} images in {time.monotonic() - generate_started:.0f} s ({GENERATE_PROCESSES} processes)"
        rows = [row for kind in (PHOTOS, DIGITS) for row in local_rows(kind, folders[kind], scratch, args.rounds)]
        notes = [generated, f"peak RSS of a process that only imports prepare and the training input (torch included): "
                            f"{run_child('imports').rss_mib:,.0f} MiB"]
        if args.azurite_n:
            blob, uploaded = blob_rows(azurite_folder, args.azurite_n, args.latency_ms, scratch, args.rounds)
            rows += blob
            notes.append(uploaded)
    lines = [f"data_throughput: {shlex.join([Path(sys.executable).name, *sys.argv])}",
             f"before: {before}; after: {load()}", "", *table(rows), "",
             *notes, f"total {time.monotonic() - started:.0f} s"]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    child = sub.add_parser("child", help="(internal) one measurement in its own process")
    child.add_argument("name", choices=sorted(CHILDREN))
    child.add_argument("kwargs", help="the measurement's arguments, as JSON")
    parser.add_argument("--n", type=int, default=10000, help="the smaller size; the larger is 10·N (default 10000)")
    parser.add_argument("--azurite-n", type=int, default=None, help="photos put into Azurite for row 3 (default N; 0: skip row 3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each pair, the best of each kept (default 2)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="round trip added by a proxy in a second row 3 (0: skip)")
    args = parser.parse_args(argv)
    if args.mode == "child":
        child_main(args.name, args.kwargs)
        return
    if args.n < 100:
        parser.error(f"expected --n of at least 100 (10 classes, each needs 10 images for the splits), got {args.n}")
    if args.rounds < 1:
        parser.error(f"expected --rounds of at least 1, got {args.rounds}")
    if args.azurite_n is None:
        args.azurite_n = args.n
    if 0 < args.azurite_n < 100:
        parser.error(f"expected --azurite-n of 0 or at least 100, got {args.azurite_n}")
    run_benchmark(args)


if __name__ == "__main__":
    main()
