"""Deploy target ``local``: the project's KServe predictor as a background process on 127.0.0.1.

The server outlives the pipeline step (it runs in its own session); its pid, URL and log path are
kept in ``STATE_DIR/serving.json`` so the next deploy replaces it and ``make stop`` stops it. The
step waits for the model-level readiness path, then sends one v1 and one v2 request and checks
that both answer with the same class.

Every server also carries, in its environment, the checkout it was started from and its state folder
(:data:`CHECKOUT_ENV`, :data:`STATE_DIR_ENV`), so :func:`stop_all` (``make stop``) finds the servers this
checkout started under any ``--workdir`` by looking at ``/proc``, with no registry file to keep in step.

The server gets only the environment it needs (:func:`server_environment`): where Python and its
libraries are, locale and temporary folder, proxies and CA bundles, GPU selection, and the Azure
settings the store reads credentials from. Nothing else of ``pipelines run``'s environment, such as
``KF_PIPELINES_TOKEN``, reaches a process that answers requests from the network.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from components.errors import DeployError
from serving.client import infer_v2, is_ready, predict_v1, v2_classes

STATE_FILE = "serving.json"
LOG_FILE = "serving.log"
SERVER_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "no_proxy", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
    # managed identity, for a store on Azure Blob
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT",
})
SERVER_ENV_PREFIXES = ("AZURE_",)  # the store's credentials: connection string, workload identity, client id
CHECKOUT = Path(__file__).resolve().parents[2]  # the checkout (or installation) this code runs from
CHECKOUT_ENV = "KFP_PS_SERVER_CHECKOUT"  # marks a server as started from CHECKOUT
STATE_DIR_ENV = "KFP_PS_SERVER_STATE_DIR"  # where that server's state file is


@dataclass(frozen=True)
class LocalEndpoint:
    url: str
    model_name: str
    model_uri: str
    pid: int
    log: str


def start(model_uri: str, model_name: str, port: int, state_dir: Path, timeout_s: float = 120.0,
          extra_args: Sequence[str] = ()) -> LocalEndpoint:
    """Replace any server this project started in ``state_dir`` with one serving ``model_uri`` (``extra_args``:
    more flags of ``python -m serving``, e.g. what it collects)."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    stop(state_dir)
    check_port_free(port)
    log_path = state_dir / LOG_FILE
    marks = {CHECKOUT_ENV: str(CHECKOUT), STATE_DIR_ENV: str(state_dir)}
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model-uri", model_uri, "--model-name", model_name,
             # One server process: this machine also runs the pipeline, and every process holds torch and the model
             # (~700 MiB). On the cluster the pod's CPU limit decides (--workers auto, sized from the profile).
             "--http-port", str(port), "--enable_grpc", "false", "--workers", "1", *extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**server_environment(os.environ), **marks},
            start_new_session=True,  # survives the step's process; stopped by pid later
        )
    endpoint = LocalEndpoint(f"http://127.0.0.1:{port}", model_name, model_uri, popen.pid, str(log_path))
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(endpoint), indent=2))
    _wait_ready(endpoint, popen, timeout_s)
    return endpoint


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` the model server needs; tokens of other systems stay behind."""
    return {k: v for k, v in environ.items() if k in SERVER_ENV_NAMES or k.startswith(SERVER_ENV_PREFIXES)}


def check_port_free(port: int, state_dir: Path | None = None) -> None:
    """Refuse ``port`` when a program listens on it, unless that is the server recorded in ``state_dir``
    (a deploy there replaces it)."""
    ours = read_state(state_dir) if state_dir is not None else None
    if ours is not None and urlparse(ours.url).port == port and _alive(ours.pid):
        return
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise DeployError(f"port {port} on 127.0.0.1 is already in use by another program; choose another with --param serving_port=N")


def _wait_ready(endpoint: LocalEndpoint, popen: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise DeployError(f"the predictor exited with code {popen.returncode} before becoming ready:\n{_tail(endpoint.log)}")
        if is_ready(endpoint.url, endpoint.model_name):
            return
        time.sleep(0.25)
    _kill(popen.pid)
    raise DeployError(f"the predictor was not ready within {timeout_s:.0f}s:\n{_tail(endpoint.log)}")


def smoke_test(endpoint: LocalEndpoint, pixels: np.ndarray) -> dict:
    """One v1 and one v2 request for ``[N,C,H,W]`` pixels; both must agree."""
    v1 = predict_v1(endpoint.url, endpoint.model_name, pixels)
    v2 = infer_v2(endpoint.url, endpoint.model_name, pixels)
    v1_classes, v2_cls = [p["class"] for p in v1], v2_classes(v2)
    if v1_classes != list(v2_cls):
        raise DeployError(f"v1 and v2 disagree on the same images: {v1_classes} vs {v2_cls}")
    return {"v1": v1, "v2_classes": list(v2_cls)}


def read_state(state_dir: Path) -> LocalEndpoint | None:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    return LocalEndpoint(**json.loads(path.read_text()))


def stop(state_dir: Path) -> LocalEndpoint | None:
    """Stop the server recorded in ``state_dir`` (if it still runs); return what was stopped."""
    endpoint = read_state(state_dir)
    if endpoint is None:
        return None
    _kill(endpoint.pid)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return endpoint


def stop_all(checkout: Path = CHECKOUT) -> list[LocalEndpoint]:
    """Stop every server started from ``checkout``, whatever its state folder; return what was stopped
    (a server whose state file is gone is stopped too, and reported with what ``/proc`` tells of it)."""
    stopped = []
    for pid, state_dir in running_servers(checkout):
        endpoint = read_state(state_dir)
        if endpoint is not None and endpoint.pid == pid:
            stop(state_dir)
        else:
            _kill(pid)
            endpoint = LocalEndpoint("(unknown: its state file is gone)", "", "", pid, str(state_dir / LOG_FILE))
        stopped.append(endpoint)
    return stopped


def running_servers(checkout: Path = CHECKOUT) -> list[tuple[int, Path]]:
    """``(pid, state folder)`` of each live server whose environment marks it as started from ``checkout``.

    Only process-group leaders count: a server's own children inherit its environment and stop with it. Its
    worker processes (``--workers``) lead sessions of their own but carry :data:`serving.workers.WORKER_ENV`:
    they stop when their supervisor does."""
    from serving.workers import WORKER_ENV

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            environ, leader = _environ(entry), os.getpgid(pid) == pid
        except OSError:  # another user's process, or one that exited while we looked
            continue
        if leader and environ.get(CHECKOUT_ENV) == str(checkout) and STATE_DIR_ENV in environ and WORKER_ENV not in environ:
            found.append((pid, Path(environ[STATE_DIR_ENV])))
    return sorted(found)


def _environ(proc: Path) -> dict[str, str]:
    """The environment a process started with, from ``/proc/PID/environ``."""
    pairs = (os.fsdecode(item).partition("=") for item in (proc / "environ").read_bytes().split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True


def _kill(pid: int, grace_s: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if _group_gone(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_gone(pid: int) -> bool:
    """True once no process of the group ``pid`` leads is left. A leader that exited stays in its group as a zombie
    until its parent collects it: where that parent is this process (a server started and stopped by the same
    process), it is collected here, else stopping would wait out the whole grace period for an empty group."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not this process's child: its own parent (or init) collects it
        pass
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
