"""The whole pipeline on a generated folder of mixed-size RGB photos: test accuracy and peak memory per process.

Generates ``--images`` JPEGs of 48–160 px sides in 10 learnable classes (the generator of
:mod:`benchmarks.data_throughput`), runs ``python -m pipelines run --local`` on them with
``image_size`` set, and watches every process of the run: ``/proc/PID/status`` ``VmHWM`` (peak
resident set) of each descendant, sampled every 0.2 s until it exits, grouped by role (the CLI, each
KFP step, parameter servers, workers, DataLoader processes, the model server). A process shorter
than the sampling period can be missed; the steps and ranks live for seconds to minutes.

    .venv/bin/python -m benchmarks.photo_pipeline [--images 20000] [--image-size 64] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.data_throughput import PHOTOS, generate

REPO = Path(__file__).resolve().parent.parent
ROLES = (("multiprocessing.spawn", "DataLoader process"), ("-m serving", "model server"),
         ("prepare_data", "prepare step"), ("train_model", "train step"), ("evaluate_model", "evaluate step"),
         ("push_model", "push step"), ("deploy_model", "deploy step"), ("pipelines run", "CLI (kfp.local)"))


def role(pid: int, cmdline: str) -> str:
    if "-m components.training" in cmdline:  # ranks 0..num_ps-1 (1 here) serve parameters, the rest train
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((int(e[5:]) for e in environ if e.startswith(b"RANK=")), -1)
        return "parameter server" if rank == 0 else "training worker"
    for needle, name in ROLES:
        if needle in cmdline:
            return name
    return "other: " + cmdline[:60]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def watch(root: int, peaks: dict[int, tuple[str, float]], done: threading.Event) -> None:
    """Record the peak RSS (MiB) and role of every descendant of ``root`` until ``done``."""
    while not done.is_set():
        for pid in descendants(root):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                name = peaks[pid][0] if pid in peaks else role(pid, cmdline)
            except OSError:
                continue  # it exited meanwhile
            hwm = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)
            peaks[pid] = (name, max(hwm, peaks.get(pid, ("", 0.0))[1]))
        time.sleep(0.2)


def run_pipeline(data: Path, workdir: Path, args: argparse.Namespace) -> tuple[int, float, dict[int, tuple[str, float]]]:
    command = [sys.executable, "-m", "pipelines", "run", "--local", "--data-uri", str(data), "--workdir", str(workdir),
               "--param", f"image_size={args.image_size}", "--param", f"epochs={args.epochs}", "--param", "model_name=photos",
               "--param", f"batch_size={args.batch_size}", "--param", "accuracy_threshold=0.5",
               "--param", f"serving_port={args.port}", "--param", "train_timeout_s=7200"]
    peaks: dict[int, tuple[str, float]] = {}
    done = threading.Event()
    started = time.perf_counter()
    with open(workdir.parent / "pipeline.log", "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=watch, args=(proc.pid, peaks, done), daemon=True)
        watcher.start()
        code = proc.wait()
    done.set()
    watcher.join()
    return code, time.perf_counter() - started, peaks


def report(workdir: Path, seconds: float, peaks: dict[int, tuple[str, float]], args: argparse.Namespace) -> None:
    from components.registry import Registry
    from components.store import open_store

    registry = Registry(open_store(str(workdir / "store")), "photos")
    manifest = registry.manifest(registry.versions()[-1])
    by_role: dict[str, list[float]] = {}
    for name, peak in peaks.values():
        by_role.setdefault(name, []).append(peak)
    print(f"\n{args.images} mixed-size RGB JPEGs, image_size={args.image_size}, {args.epochs} epochs, batch {args.batch_size}; "
          f"pipeline wall time {seconds:.0f} s; load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
    print(f"test accuracy {manifest['metrics']['candidate']['accuracy']:.4f} ({manifest['verdict']['decision']})\n")
    print("| process | count | peak RSS MiB (max) |\n|---|---:|---:|")
    for name, values in sorted(by_role.items(), key=lambda item: -max(item[1])):
        print(f"| {name} | {len(values)} | {max(values):.0f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--port", type=int, default=8093)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="photo-pipeline-") as tmp:
        with multiprocessing.Pool(2) as pool:
            data = generate(Path(tmp, "raw"), PHOTOS, args.images, pool)
        code, seconds, peaks = run_pipeline(data, Path(tmp, "work"), args)
        subprocess.run([sys.executable, "-m", "pipelines", "stop", "--workdir", str(Path(tmp, "work"))], cwd=REPO, check=False)
        if code != 0:
            sys.exit(f"the pipeline failed (exit {code}):\n{Path(tmp, 'pipeline.log').read_text()[-4000:]}")
        report(Path(tmp, "work"), seconds, peaks, args)
        print(json.dumps({"log_tail": Path(tmp, "pipeline.log").read_text().splitlines()[-3:]}))


if __name__ == "__main__":
    main()
