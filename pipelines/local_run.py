"""Run the whole pipeline on this machine under ``kfp.local`` and report what it produced.

Every step runs as a subprocess of this interpreter (``SubprocessRunner(use_venv=False)``); the
training step starts its parameter-server and worker processes, the deploy step leaves a KServe
server running on 127.0.0.1. Afterwards the summary reads the registry and calls the endpoint over
REST, so what it prints is what the store and the server actually hold.

Each run keeps its kfp.local outputs under a root of its own (``WORKDIR/kfp-root/<time>-<id>``), so its
summary reads the version its own push step registered, even when other runs push to the same registry.
Its step logs and reports go to ``WORKDIR/runs/<time>-<id>/`` (:mod:`pipelines.run_folder`), and the console
shows one line per step (:mod:`pipelines.run_progress`) after a preflight (:mod:`pipelines.preflight`).

:func:`run_supervised` runs all of that in a child process in a process group of its own, with this
process as the subreaper of everything below it. A terminal's Ctrl-C then reaches only this process, which
stops every process the run started (steps, training ranks in their own sessions, a half-started server)
with SIGTERM, then SIGKILL after a grace period, and exits with one line: nothing keeps writing to the
store after the command returned.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from components.data.prepare import first_examples, read_info
from components.data.sample import write_sample
from components.deploy import local as local_server
from components.errors import ProjectError
from components.registry import Registry, split_pinned
from components.store import Store, open_store
from pipelines.pipeline import training_pipeline
from pipelines.preflight import preflight
from pipelines.run_folder import LOGS, collect_reports, task_output
from pipelines.run_progress import RunProgress, StepFailed, announce, following, key_figure, shown_path
from serving.client import predict_v1

DEFAULT_WORKDIR = Path(".work")
PUSH_TASK = "push-model"  # the push step's task name in the pipeline
DRIFT_TASK, RETRAIN_TASK = "drift-report", "start-training"  # the monitoring pipeline's task names
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE_S = 30.0  # time for steps to clean up (a kserve deploy rolls back) before SIGKILL
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
PR_SET_PDEATHSIG = 1


def git_commit() -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``""`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return commit + ("-dirty" if dirty.strip() else "")


def local_arguments(workdir: Path, data_uri: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's arguments for a local run: the bundled sample and stores under ``workdir``."""
    workdir = workdir.resolve()
    arguments = {
        "data_uri": data_uri or write_sample(str(workdir / "data" / "digits")),
        "store_uri": str(workdir / "store"),
        "local_state_dir": str(workdir / "serving"),
        # The local server records what it answers into the work dir's store, for `run --local --pipeline
        # monitoring` (collect_fraction of requests; --param collect_uri= turns it off).
        "collect_uri": str(workdir / "store"),
        "code_version": git_commit(),
    }
    return {**arguments, **overrides}


def open_run_store(arguments: dict[str, Any]) -> Store:
    """The run's store, its root created (a Blob container) before any step writes to it."""
    store = open_store(arguments["store_uri"])
    store.ensure_root()
    return store


def new_run_root(workdir: Path) -> Path:
    """A kfp.local pipeline root for one run only: its outputs cannot be mistaken for another run's."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return workdir.resolve() / "kfp-root" / f"{stamp}-{uuid.uuid4().hex[:8]}"


def check_before_run(params: Mapping[str, Any], store: Store, console: TextIO) -> None:
    """The preflight (:func:`pipelines.preflight.preflight`), in one console line; raises what it found wrong."""
    started = time.monotonic()
    try:
        found = preflight(params, store)
    except ProjectError:
        announce(console, "preflight", f"FAILED after {time.monotonic() - started:.1f}s")
        raise
    announce(console, "preflight", f"ok in {time.monotonic() - started:.1f}s: {found}")


def run_followed(run_root: Path, folder: Path, arguments: dict[str, Any], verbose: bool = False,
                 pipeline: Any = training_pipeline) -> list[Path]:
    """:func:`run_local` with one console line per step and each step's log under ``folder``; return the reports
    copied into ``folder`` (also after a failure). A failed step raises :class:`StepFailed`."""
    progress = RunProgress(folder / LOGS, sys.stdout, lambda task: key_figure(task, task_output(run_root, task) or {}), verbose)
    hint = "" if verbose else " (-v: all of kfp.local's output)"
    announce(sys.stdout, "run", f"{run_root.name}: logs and reports in {shown_path(folder)}/{hint}")
    try:
        with following(progress):
            run_local(run_root, arguments, pipeline)
    except RuntimeError:  # kfp.local's "Pipeline … finished with status FAILURE"; the step's own reason is better
        if progress.failure is None:
            raise
        raise StepFailed(progress.failure) from None
    finally:
        reports = collect_reports(run_root, folder, pipeline.pipeline_spec)
    return reports


def run_local(run_root: Path, arguments: dict[str, Any], pipeline: Any = training_pipeline) -> None:
    """Run the pipeline to completion with its outputs under ``run_root``; raises when a step fails."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(run_root), raise_on_error=True)
    pipeline(**arguments)


def monitoring_arguments(workdir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The monitoring pipeline's arguments for a local run: the work dir's store (where a local run's server
    collects), and a training run on drift as ``run --local`` in the same work dir."""
    workdir = workdir.resolve()
    arguments = {"store_uri": str(workdir / "store"), "retrain_target": "local", "local_workdir": str(workdir),
                 "code_version": git_commit()}
    return {**arguments, **overrides}


def format_monitoring_summary(run_root: Path, arguments: Mapping[str, Any], reports: Sequence[Path]) -> str:
    """The verdict of the run's drift report, what was done about it, and where the reports are."""
    verdict = (task_output(run_root, DRIFT_TASK) or {}).get("parameterValues", {}).get("Output", "?")
    from pipelines.retrain import local_version

    retrained = (task_output(run_root, RETRAIN_TASK) or {}).get("parameterValues", {}).get("Output")
    if (version := local_version(retrained)) is not None:
        verdict_of = Registry(open_store(arguments["store_uri"]), arguments.get("model_name", "digits")).manifest(version)["verdict"]
        action = (f"the training pipeline ran here and registered v{version} ({verdict_of['decision']}: {verdict_of['reason']}); "
                  f"its output is in the {RETRAIN_TASK} log")
    elif retrained:
        action = f"started training run {retrained}"
    elif verdict == "drift":
        action = "no training run (retrain_on_drift is false)"
    else:
        action = "no training run needed"
    lines = ["", "=" * 72, f"drift report       {verdict} ({arguments.get('model_name', 'digits')}, since {arguments.get('since', '24h')})",
             f"retraining         {action}"]
    lines += [f"{'reports' if i == 0 else '':<19}{shown_path(path)}" for i, path in enumerate(reports)]
    return "\n".join([*lines, "=" * 72])


def pushed_version(run_root: Path) -> int:
    """The registry version this run's push step registered (its output parameter ``version``)."""
    output = task_output(run_root, PUSH_TASK)
    if output is None:
        raise ProjectError(f"expected one {PUSH_TASK} output under {run_root}, found none: the run did not push a version")
    try:
        return int(output["parameterValues"]["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProjectError(f"expected parameterValues.version in the {PUSH_TASK} output under {run_root}: {exc!r}") from None


@dataclass
class Summary:
    model_name: str
    version: int
    accuracy: float
    decision: str
    reason: str
    url: str | None
    prediction: dict[str, Any] | None
    true_label: str | None
    reports: list[Path] = field(default_factory=list)
    identical_to: int | None = None  # the production version whose weights this version's are, byte for byte
    run_id: str | None = None  # the pipeline's run id (kfp.local draws its own): the one the reports and lineage show


def summarize(store: Store, workdir: Path, arguments: dict[str, Any], model_name: str, version: int,
              reports: Sequence[Path] = ()) -> Summary:
    """What the run left in the registry of ``store`` (``version``: the one it pushed) and, when it deployed,
    one prediction from the endpoint; ``reports``: the run's report files."""
    registry = Registry(store, model_name)
    manifest = registry.manifest(version)
    verdict = manifest["verdict"]
    summary = Summary(model_name, version, manifest["metrics"]["candidate"]["accuracy"], verdict["decision"], verdict["reason"], None, None, None,
                      list(reports))
    endpoint = local_server.read_state(Path(arguments["local_state_dir"]))
    summary.run_id = manifest.get("lineage", {}).get("run_id")
    # A rerun that reproduced production's weights was not deployed again: production's server speaks for it.
    summary.identical_to = registry.identical_production(version) if verdict["decision"] == "accepted" else None
    served = summary.identical_to or version
    # Another run may have replaced the server since: only a server of this version speaks for this run.
    if verdict["decision"] == "accepted" and endpoint is not None and _serves(endpoint, registry.version_uri(served)):
        info = read_info(store, manifest["lineage"]["dataset_prefix"])
        pixels, labels = first_examples(store, info, "test", 1)
        _write_requests(workdir, pixels)
        summary.url = endpoint.url
        summary.prediction = predict_v1(endpoint.url, model_name, pixels)[0]
        summary.true_label = info.class_names[int(labels[0])]
    return summary


def _serves(endpoint: local_server.LocalEndpoint, version_uri: str) -> bool:
    return split_pinned(endpoint.model_uri)[0] == version_uri


def _write_requests(workdir: Path, pixels: np.ndarray) -> None:
    (workdir / "request-v1.json").write_text(json.dumps({"instances": pixels.tolist()}))
    v2 = {"inputs": [{"name": "images", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.astype(float).ravel().tolist()}]}
    (workdir / "request-v2.json").write_text(json.dumps(v2))


def format_summary(s: Summary, workdir: Path) -> str:
    lines = ["", "=" * 72, f"test accuracy      {s.accuracy:.4f}", f"registry version   {s.model_name} v{s.version} ({s.decision}: {s.reason})"]
    if s.run_id:
        lines.append(f"{'':<19}pipeline run {s.run_id} (the run id in the reports and in the version's lineage)")
    if s.identical_to is not None:
        lines.append(f"{'':<19}identical to production v{s.identical_to} (the same weights): not deployed again")
    reports = [f"{'reports' if i == 0 else '':<19}{shown_path(path)}" for i, path in enumerate(s.reports)]
    if s.url is None:
        why = "the gate rejected the candidate" if s.decision != "accepted" else "no local server serves this version now"
        lines += [f"endpoint           not deployed ({why})", *reports, "=" * 72]
        return "\n".join(lines)
    top = s.prediction["probabilities"][s.prediction["class"]]
    lines += [
        f"endpoint           {s.url}  (model '{s.model_name}' v{s.identical_to or s.version}; stop it with: make stop)",
        f"REST prediction    class {s.prediction['label']} with p={top:.3f} (true label {s.true_label})",
        *reports,
        "",
        "try it:",
        f"  curl -s -H 'Content-Type: application/json' -d @{workdir}/request-v1.json {s.url}/v1/models/{s.model_name}:predict",
        f"  curl -s -H 'Content-Type: application/json' -d @{workdir}/request-v2.json {s.url}/v2/models/{s.model_name}/infer",
        "=" * 72,
    ]
    return "\n".join(lines)


class Interrupted(BaseException):
    """This process received one of :data:`STOP_SIGNALS` (a BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` in a library turns it into a failed task and carries on)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_supervised(command: list[str]) -> int:
    """Run ``command`` (this CLI running the pipeline) in its own process group and return its exit code;
    on SIGINT or SIGTERM stop every process below this one, say so in one line and return 128 + signal."""
    _become_subreaper()  # orphans of the run (ranks whose step died) stay below this process, so they are found
    parent = os.getpid()
    child = subprocess.Popen(command, process_group=0, stdin=subprocess.DEVNULL, preexec_fn=lambda: _follow_parent(parent))

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        return child.wait()
    except Interrupted as caught:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        stopped = stop_descendants(STOP_GRACE_S)
        print(f"interrupted by {caught}: stopped the pipeline run and the {stopped} processes it had started "
              f"(steps, training ranks); models it already registered stay in the registry", file=sys.stderr)
        return 128 + caught.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _become_subreaper() -> None:
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _follow_parent(parent: int) -> None:
    """In the run's child, before it starts: get SIGTERM when the supervising CLI dies, even by SIGKILL."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def stopping_descendants_on_sigterm() -> Iterator[None]:
    """Inside the run's child: on SIGTERM (from the CLI, or because the CLI died) stop every process below
    this one before exiting, so no step or training rank outlives the run."""
    _become_subreaper()

    def stop_and_exit(signum: int, frame: object) -> None:
        # The stopping happens here, not after unwinding: kfp.local's Popen context waits for its step on the
        # way out, and the step only ends once it is stopped.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_descendants(STOP_GRACE_S)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop_and_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_descendants(grace_s: float) -> int:
    """SIGTERM every live process below this one (new ones as they appear), SIGKILL what is left after
    ``grace_s``, reap them all; return how many processes were stopped."""
    signalled: set[int] = set()
    deadline = time.monotonic() + grace_s
    while pids := descendants(os.getpid()):
        sig = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
        for pid in pids if sig == signal.SIGKILL else pids - signalled:
            _signal(pid, sig)
        signalled |= pids
        time.sleep(0.1)
        _reap()
    _reap()
    return len(signalled)


def descendants(root: int) -> set[int]:
    """Live (not zombie) processes below ``root``, from ``/proc``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited while we looked
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            if state != "Z":
                parents[int(entry.name)] = int(ppid)
    found, frontier = set(), [root]
    while frontier:
        parent = frontier.pop()
        children = {pid for pid, ppid in parents.items() if ppid == parent} - found
        found |= children
        frontier.extend(children)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap() -> None:
    """Collect exited children (as the subreaper, the run's orphans are this process's children too)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
