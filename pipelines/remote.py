"""Talk to a Kubeflow Pipelines (KFP v2) endpoint with the kfp client: connect, upload, submit, wait, schedule.

Connection settings never travel as pipeline parameters: the endpoint comes from ``--host`` or
``KF_PIPELINES_ENDPOINT``, the namespace is always given explicitly, and the bearer token comes from a file or
``KF_PIPELINES_TOKEN`` (in CI, a Kubernetes service-account token). The token is never printed.

Every expected failure (unreachable endpoint, rejected token, unknown experiment, failed run, timeout) is raised
as :class:`RemoteError` with a one-line message that says what was expected and what was found.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kfp_server_api
import urllib3
import yaml

# Not `kfp.Client`: inside a pipeline step (_KFP_RUNTIME=true) the kfp package does not import its client,
# and the monitoring pipeline's training step submits runs with it.
from kfp.client import Client

from components.errors import ProjectError
from pipelines.cron import normalize_cron

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"  # the variable kfp.Client itself reads
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"  # kfp.Client's variable for UI links, when the UI is elsewhere
TOKEN_ENV = "KF_PIPELINES_TOKEN"  # ours: the bearer token, when no --token-file is given

SUCCESS_STATES = frozenset({"SUCCEEDED"})
# V2beta1RuntimeState has FAILED, CANCELING, CANCELED and SKIPPED; ERROR is the v1 API's terminal failure state,
# which the kfp client's own wait still lists. A run that is being cancelled will not succeed: stop at CANCELING.
FAILURE_STATES = frozenset({"FAILED", "CANCELED", "CANCELING", "SKIPPED", "ERROR"})
_TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
_PROBE_TIMEOUT_S = (10, 30)  # connect, read: fail fast on an endpoint that drops packets
_PAGE_SIZE = 100
_MAX_PAGES = 100
_WRONG_URL_HINT = "; is the URL the pipelines API? In a Kubeflow platform it ends in /pipeline"
MANAGED_DESCRIPTION = "Managed as code by `python -m pipelines schedule`; changes made in the UI are replaced."


class RemoteError(ProjectError):
    """Talking to the KFP endpoint failed, or what it returned is not what was expected."""


class RunFailedError(RemoteError):
    """A run ended in a state other than SUCCEEDED."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class RunTimeoutError(RemoteError):
    """A run did not end within the time the caller was prepared to wait."""


class KfpClient(Client):
    """A ``kfp.Client`` bound to one endpoint and one explicitly given namespace.

    The stock client also reads a namespace from ``~/.config/kfp/context.json`` and, when it finds none, probes
    ``/healthz`` five times with 5 s sleeps in its constructor. Here the namespace is always the caller's, so
    neither happens: connection problems surface in :func:`check_access` instead, once and quickly.
    """

    def __init__(self, endpoint: str, namespace: str, token: str | None) -> None:
        self.endpoint = endpoint
        self.namespace = namespace
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
            super().__init__(host=endpoint, namespace=namespace, existing_token=token)

    def _load_context_setting_or_default(self) -> None:
        self._context_setting = {"namespace": self.namespace}


@dataclass(frozen=True)
class PackageInfo:
    """What the remote commands need to know about a compiled pipeline package."""

    path: Path
    pipeline_name: str
    description: str
    sha256: str


@dataclass(frozen=True)
class PipelineVersionRef:
    """An uploaded pipeline version; ``created`` is False when it existed already."""

    pipeline_id: str
    version_id: str
    version_name: str
    created: bool


@dataclass(frozen=True)
class ScheduleResult:
    """What :func:`schedule` did: ``unchanged``, ``created`` or ``replaced`` (with what changed)."""

    action: str
    recurring_run_id: str
    changes: tuple[str, ...] = ()


# --- connection -------------------------------------------------------------------------------------------


def resolve_endpoint(host: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The KFP API endpoint from ``host`` or ``$KF_PIPELINES_ENDPOINT``, as an http(s) URL without a trailing /."""
    value = (host or environ.get(ENDPOINT_ENV, "")).strip()
    if not value:
        raise RemoteError(
            f"expected the KFP endpoint in --host or ${ENDPOINT_ENV} "
            "(e.g. https://kubeflow.example.com/pipeline); got neither"
        )
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RemoteError(f"expected the KFP endpoint as an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def read_token(token_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token from ``token_file`` if given, else ``$KF_PIPELINES_TOKEN``, else None (anonymous)."""
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except OSError as error:
            raise RemoteError(f"expected a readable token file at {token_file}, got: {error.strerror}") from None
        source = f"token file {token_file}"
    else:
        text = environ.get(TOKEN_ENV, "")
        source = f"${TOKEN_ENV}"
    token = text.strip().removeprefix("Bearer ").strip()
    if token_file is not None and not token:
        raise RemoteError(f"expected a bearer token in the {source}, found an empty file")
    if any(char.isspace() for char in token):
        raise RemoteError(f"expected a single bearer token in the {source}, found whitespace inside it")
    return token or None


def connect(host: str | None, namespace: str | None, token: str | None) -> KfpClient:
    """A client for the endpoint (``host`` or ``$KF_PIPELINES_ENDPOINT``) in ``namespace``, checked for access.

    Args:
        host: The KFP API URL, e.g. ``https://kubeflow.example.com/pipeline``; None to use the environment.
        namespace: The Kubeflow profile namespace to work in. Required: never guessed.
        token: Bearer token (see :func:`read_token`), or None for an endpoint without authentication.

    Raises:
        RemoteError: no endpoint or namespace, the endpoint is unreachable, or it rejects the token.
    """
    endpoint = resolve_endpoint(host)
    if not namespace:
        raise RemoteError("expected an explicit Kubeflow namespace (--namespace, e.g. your profile's); got none")
    client = KfpClient(endpoint, namespace, token)
    check_access(client, token_given=token is not None)
    return client


def check_access(client: KfpClient, token_given: bool) -> None:
    """List one experiment in the client's namespace: proves the endpoint is reachable and the token allowed."""
    action = f"list experiments in namespace {client.namespace!r} at {client.endpoint}"
    try:
        response = client.experiments.experiment_service_list_experiments(
            namespace=client.namespace, page_size=1, _preload_content=False, _request_timeout=_PROBE_TIMEOUT_S
        )
    except kfp_server_api.ApiException as error:
        hint = _WRONG_URL_HINT if error.status == HTTPStatus.NOT_FOUND else ""
        raise RemoteError(f"{_api_error(action, error, token_given)}{hint}") from None
    except urllib3.exceptions.HTTPError as error:
        raise _connection_error(action, error) from None
    content_type = response.headers.get("Content-Type", "")
    response.release_conn()
    if "json" not in content_type:
        raise RemoteError(
            f"expected a JSON response from the KFP API at {client.endpoint}, got {content_type or 'no content type'}"
            f" (HTTP {response.status}); a login page means the token was not accepted{_WRONG_URL_HINT}"
        )


# --- package and version naming ---------------------------------------------------------------------------


def read_package(path: Path) -> PackageInfo:
    """Name, description and SHA-256 of a compiled KFP pipeline package (YAML)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RemoteError(f"expected a compiled pipeline package at {path}, got: {error.strerror}") from None
    try:
        spec = next(yaml.safe_load_all(data), None)
    except yaml.YAMLError as error:
        raise RemoteError(f"expected a KFP pipeline package (YAML) at {path}, got invalid YAML: {error}") from None
    info = spec.get("pipelineInfo") if isinstance(spec, dict) else None
    if not isinstance(info, dict) or not info.get("name"):
        raise RemoteError(f"expected a KFP pipeline package with pipelineInfo.name at {path}, found none")
    return PackageInfo(path, info["name"], info.get("description", ""), hashlib.sha256(data).hexdigest())


def git_version_name(repo_dir: Path, package_sha256: str) -> str:
    """The pipeline version name for the checkout: the 12-character commit, ``-dirty-<hash>`` when modified.

    A modified tree gets the first 8 hex digits of the package's SHA-256 after ``-dirty`` so that two different
    uncommitted states of one commit never share a version name (and the same state uploads only once).
    Untracked files (such as the compiled package itself) do not count as modifications.
    """
    commit = _git(repo_dir, "rev-parse", "--short=12", "HEAD")
    dirty = _git(repo_dir, "status", "--porcelain", "--untracked-files=no") != ""
    return f"{commit}-dirty-{package_sha256[:8]}" if dirty else commit


def _git(repo_dir: Path, *args: str) -> str:
    command = ["git", "-C", str(repo_dir), *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RemoteError("expected git on PATH to name the pipeline version; pass --version-name instead") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[0]
        raise RemoteError(
            f"expected a git checkout at {repo_dir} to name the pipeline version, got: {reason}; "
            "pass --version-name instead"
        )
    return result.stdout.strip()


# --- upload -----------------------------------------------------------------------------------------------


def upload(client: KfpClient, package_path: Path, pipeline_name: str, version_name: str) -> PipelineVersionRef:
    """Make sure version ``version_name`` of pipeline ``pipeline_name`` exists in the client's namespace.

    Creates the pipeline when it is absent, then uploads the package as a version with that name. Idempotent:
    when the version exists already (also when a concurrent upload of the same commit wins), nothing is uploaded.
    """
    package = read_package(package_path)
    pipeline_id = find_pipeline_id(client, pipeline_name)
    if pipeline_id is None:
        pipeline_id = create_pipeline(client, pipeline_name, package.description)
    version_id = find_version_id(client, pipeline_id, version_name)
    if version_id is not None:
        return PipelineVersionRef(pipeline_id, version_id, version_name, created=False)
    return _upload_version(client, package, pipeline_id, version_name)


def find_pipeline_id(client: KfpClient, name: str) -> str | None:
    """The id of the pipeline named ``name`` in the client's namespace, or None."""
    with _api_errors(f"list pipelines named {name!r} in namespace {client.namespace!r}"):
        pipelines = _all_pages(
            lambda token: client.list_pipelines(
                page_token=token, page_size=_PAGE_SIZE, filter=_name_filter(name), namespace=client.namespace
            ),
            "pipelines",
        )
    ids = [p.pipeline_id for p in pipelines if name in (p.display_name, p.name)]
    if len(ids) > 1:
        raise RemoteError(f"expected one pipeline named {name!r} in namespace {client.namespace!r}, found {len(ids)}")
    return ids[0] if ids else None


def create_pipeline(client: KfpClient, name: str, description: str) -> str:
    """Create an empty pipeline (no version yet) and return its id; on a lost creation race, the winner's id."""
    body = kfp_server_api.V2beta1Pipeline(
        display_name=name, name=name, description=description or None, namespace=client.namespace
    )
    try:
        return client.pipelines.pipeline_service_create_pipeline(pipeline=body).pipeline_id
    except kfp_server_api.ApiException as error:
        winner = find_pipeline_id(client, name) if error.status == HTTPStatus.CONFLICT else None
        if winner is None:
            raise _api_error(f"create pipeline {name!r} in namespace {client.namespace!r}", error) from None
        return winner
    except urllib3.exceptions.HTTPError as error:
        raise _connection_error(f"create pipeline {name!r}", error) from None


def find_version_id(client: KfpClient, pipeline_id: str, version_name: str) -> str | None:
    """The id of the version named ``version_name`` of pipeline ``pipeline_id``, or None."""
    with _api_errors(f"list versions of pipeline {pipeline_id}"):
        versions = _all_pages(
            lambda token: client.list_pipeline_versions(
                pipeline_id, page_token=token, page_size=_PAGE_SIZE, filter=_name_filter(version_name)
            ),
            "pipeline_versions",
        )
    ids = [v.pipeline_version_id for v in versions if version_name in (v.display_name, v.name)]
    return ids[0] if ids else None


def _upload_version(client: KfpClient, package: PackageInfo, pipeline_id: str, name: str) -> PipelineVersionRef:
    action = f"upload {package.path} as version {name!r} of pipeline {pipeline_id}"
    try:
        with _quiet():
            version = client.upload_pipeline_version(
                str(package.path), name, pipeline_id=pipeline_id, description=f"package sha256 {package.sha256}"
            )
    except kfp_server_api.ApiException as error:
        winner = find_version_id(client, pipeline_id, name) if error.status == HTTPStatus.CONFLICT else None
        if winner is None:
            raise _api_error(action, error) from None
        return PipelineVersionRef(pipeline_id, winner, name, created=False)
    except urllib3.exceptions.HTTPError as error:
        raise _connection_error(action, error) from None
    return PipelineVersionRef(pipeline_id, version.pipeline_version_id, name, created=True)


# --- experiments and runs ---------------------------------------------------------------------------------


def find_experiment_id(client: KfpClient, name: str, create: bool = False) -> str:
    """The id of experiment ``name`` in the client's namespace; created only when ``create`` is True."""
    with _api_errors(f"list experiments named {name!r} in namespace {client.namespace!r}"):
        found = _all_pages(
            lambda token: client.list_experiments(
                page_token=token, page_size=_PAGE_SIZE, filter=_name_filter(name), namespace=client.namespace
            ),
            "experiments",
        )
    matches = [e for e in found if e.display_name == name]
    ids = [e.experiment_id for e in matches]
    if len(ids) == 1 and matches[0].storage_state == "ARCHIVED":
        raise RemoteError(
            f"expected experiment {name!r} in namespace {client.namespace!r} to be active, found it archived; "
            "restore it in the Kubeflow UI or choose another experiment"
        )
    if len(ids) == 1:
        return ids[0]
    if len(ids) > 1:
        raise RemoteError(f"expected one experiment named {name!r} in namespace {client.namespace!r}, found {len(ids)}")
    if not create:
        raise RemoteError(
            f"expected an experiment named {name!r} in namespace {client.namespace!r}, found none "
            f"(existing: {_experiment_names(client)}); create it in the Kubeflow UI or pass --create-experiment"
        )
    with _api_errors(f"create experiment {name!r} in namespace {client.namespace!r}"), _quiet():
        return client.create_experiment(name, namespace=client.namespace).experiment_id


def submit(
    client: KfpClient,
    source: PipelineVersionRef | Path,
    experiment: str,
    params: Mapping[str, Any],
    run_name: str,
    create_experiment: bool = False,
    service_account: str | None = None,
) -> str:
    """Start a run of an uploaded pipeline version (or of a package file) and print its URL; return the run id.

    Args:
        source: An uploaded version (the run is linked to it in the UI) or the path of a compiled package.
        experiment: Experiment name in the client's namespace; must exist unless ``create_experiment``.
        params: Typed pipeline arguments (see :func:`pipelines.params.parse_params`).
        run_name: The run's display name.
        service_account: Kubernetes service account for the run's pods; None for the namespace default.
    """
    experiment_id = find_experiment_id(client, experiment, create=create_experiment)
    if isinstance(source, Path):
        target: dict[str, Any] = {"pipeline_package_path": str(source)}
    else:
        target = {"pipeline_id": source.pipeline_id, "version_id": source.version_id}
    with _api_errors(f"start run {run_name!r} in experiment {experiment!r}"), _quiet():
        run = client.run_pipeline(
            experiment_id=experiment_id, job_name=run_name, params=dict(params),
            service_account=service_account, **target,
        )
    print(f"Run {run.run_id} started: {ui_url(client, f'runs/details/{run.run_id}')}")
    return run.run_id


def ui_url(client: KfpClient, fragment: str) -> str:
    """A link into the KFP UI (``$KF_PIPELINES_UI_ENDPOINT`` or the endpoint), e.g. ``runs/details/ID``."""
    base = os.environ.get(UI_ENDPOINT_ENV, "").rstrip("/") or client.endpoint
    return f"{base}/#/{fragment}"


def wait_for_run(
    client: KfpClient,
    run_id: str,
    timeout_s: float,
    poll_s: float = 15.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_state: Callable[[str, float], None] | None = None,
    max_poll_errors: int = 5,
) -> str:
    """Poll a run until it ends; return ``SUCCEEDED`` or raise.

    Unlike ``kfp.Client.wait_for_run_completion``, this ends for cancelled runs too. Transient API errors
    (HTTP 5xx, dropped connections) are retried up to ``max_poll_errors`` times in a row.

    Args:
        timeout_s: How long to wait from the first poll; the run keeps going on the cluster after a timeout.
        poll_s: Seconds between polls.
        clock, sleep: Injectable time source and sleep, for tests.
        on_state: Called with (state, seconds waited) whenever the state changes.

    Raises:
        RunFailedError: the run ended FAILED, ERROR, SKIPPED, CANCELING or CANCELED.
        RunTimeoutError: the run had not ended after ``timeout_s``.
        RemoteError: the run cannot be read (unknown id, token rejected, too many transient errors).
    """
    start = clock()
    last_state = None
    errors = 0
    while True:
        run, errors = _poll_run(client, run_id, errors, max_poll_errors)
        state = (run.state or "RUNTIME_STATE_UNSPECIFIED").upper() if run is not None else last_state
        if state != last_state and state is not None and on_state is not None:
            on_state(state, clock() - start)
        last_state = state
        if state in SUCCESS_STATES:
            return state
        if state in FAILURE_STATES:
            raise RunFailedError(_failure_message(client, run_id, state, run), state)
        remaining = timeout_s - (clock() - start)
        if remaining <= 0:
            raise RunTimeoutError(
                f"run {run_id} still {state or 'unknown'} after {timeout_s:g} s, expected it to end within the "
                f"timeout; it keeps running on the cluster: {ui_url(client, f'runs/details/{run_id}')}"
            )
        sleep(min(poll_s, remaining))


def _poll_run(client: KfpClient, run_id: str, errors: int, max_errors: int) -> tuple[Any, int]:
    """One poll: (run, 0) on success, (None, errors + 1) on a transient error; raises on anything else."""
    action = f"read the state of run {run_id}"
    try:
        return client.get_run(run_id), 0
    except kfp_server_api.ApiException as error:
        if error.status not in _TRANSIENT_STATUSES or errors + 1 >= max_errors:
            raise _api_error(action, error) from None
    except urllib3.exceptions.HTTPError as error:
        if errors + 1 >= max_errors:
            raise _connection_error(action, error) from None
    return None, errors + 1


def _failure_message(client: KfpClient, run_id: str, state: str, run: Any) -> str:
    reason = getattr(run.error, "message", None) if run.error is not None else None
    detail = f": {_one_line(reason)}" if reason else ""
    return f"run {run_id} ended {state}, expected SUCCEEDED{detail} — {ui_url(client, f'runs/details/{run_id}')}"


# --- recurring runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecurringRunSpec:
    """The desired state of a recurring run, compared field by field with what the server holds."""

    name: str
    cron: str
    pipeline_id: str
    version_id: str
    params: Mapping[str, Any]
    max_concurrency: int = 1
    no_catchup: bool = True
    service_account: str | None = None


def schedule(
    client: KfpClient,
    name: str,
    cron: str,
    experiment: str,
    pipeline_id: str,
    version_id: str,
    params: Mapping[str, Any],
    max_concurrency: int = 1,
    no_catchup: bool = True,
    create_experiment: bool = False,
    service_account: str | None = None,
) -> ScheduleResult:
    """Create or update the recurring run called ``name`` in ``experiment``, so one schedule exists per name.

    KFP has no update call for recurring runs (the kfp client offers create, get, list, enable, disable and
    delete), so a recurring run whose version, cron, parameters, concurrency, catch-up or enabled state differs is
    deleted and created anew; one that matches is left alone. ``cron`` must already have six fields.
    """
    spec = RecurringRunSpec(
        name, normalize_cron(cron), pipeline_id, version_id, dict(params), max_concurrency, no_catchup,
        service_account,
    )
    experiment_id = find_experiment_id(client, experiment, create=create_experiment)
    existing = find_recurring_runs(client, experiment_id, name)
    if len(existing) == 1 and not recurring_run_differences(existing[0], spec):
        return ScheduleResult("unchanged", existing[0].recurring_run_id)
    changes = tuple(change for run in existing for change in recurring_run_differences(run, spec))
    for run in existing:
        with _api_errors(f"delete the outdated recurring run {name!r} ({run.recurring_run_id})"):
            client.delete_recurring_run(run.recurring_run_id)
    created = _create_recurring_run(client, experiment_id, spec)
    return ScheduleResult("replaced" if existing else "created", created, changes)


def find_recurring_runs(client: KfpClient, experiment_id: str, name: str) -> list[Any]:
    """All recurring runs called ``name`` in the experiment (normally zero or one)."""
    with _api_errors(f"list recurring runs named {name!r} in experiment {experiment_id}"):
        runs = _all_pages(
            lambda token: client.list_recurring_runs(
                page_token=token, page_size=_PAGE_SIZE, experiment_id=experiment_id, filter=_name_filter(name)
            ),
            "recurring_runs",
        )
    return [run for run in runs if run.display_name == name]


def recurring_run_differences(existing: Any, spec: RecurringRunSpec) -> list[str]:
    """Human-readable differences between a server-side recurring run and the desired spec; empty if none."""
    reference = existing.pipeline_version_reference
    version_id = reference.pipeline_version_id if reference is not None else existing.pipeline_version_id
    cron_schedule = existing.trigger.cron_schedule if existing.trigger is not None else None
    config = existing.runtime_config
    found = {
        "pipeline version": version_id,
        "cron": cron_schedule.cron if cron_schedule is not None else None,
        "parameters": (config.parameters if config is not None else None) or {},
        "max concurrency": int(existing.max_concurrency or 0),
        "no catch-up": bool(existing.no_catchup),
        "mode": existing.mode,
    }
    wanted = {
        "pipeline version": spec.version_id,
        "cron": spec.cron,
        "parameters": dict(spec.params),
        "max concurrency": spec.max_concurrency,
        "no catch-up": spec.no_catchup,
        "mode": kfp_server_api.RecurringRunMode.ENABLE,
    }
    if spec.service_account:  # unset means "the namespace default", which the server fills in
        found["service account"], wanted["service account"] = existing.service_account, spec.service_account
    return [f"{key} {found[key]!r} -> {wanted[key]!r}" for key in wanted if found[key] != wanted[key]]


def _create_recurring_run(client: KfpClient, experiment_id: str, spec: RecurringRunSpec) -> str:
    with _api_errors(f"create recurring run {spec.name!r} (old one, if any, already deleted)"):
        created = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=spec.name,
            description=MANAGED_DESCRIPTION,
            cron_expression=spec.cron,
            max_concurrency=spec.max_concurrency,
            no_catchup=spec.no_catchup,
            params=dict(spec.params),
            pipeline_id=spec.pipeline_id,
            version_id=spec.version_id,
            enabled=True,
            service_account=spec.service_account,
        )
    return created.recurring_run_id


# --- helpers ----------------------------------------------------------------------------------------------


def _name_filter(name: str) -> str:
    """A KFP list filter (JSON-serialized ``Filter`` proto) for ``display_name == name``."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _all_pages(fetch: Callable[[str], Any], field: str) -> list[Any]:
    """Concatenate ``field`` over all pages of a KFP list call (``fetch(page_token)``)."""
    items: list[Any] = []
    token = ""
    for _ in range(_MAX_PAGES):
        page = fetch(token)
        items.extend(getattr(page, field) or [])
        token = page.next_page_token or ""
        if not token:
            return items
    raise RemoteError(f"expected at most {_MAX_PAGES} pages of {field}, the server returned more")


def _experiment_names(client: KfpClient) -> str:
    with _api_errors(f"list experiments in namespace {client.namespace!r}"):
        page = client.list_experiments(page_size=20, namespace=client.namespace)
    names = sorted(e.display_name for e in page.experiments or [])
    if not names:
        return "none"
    more = ", …" if page.next_page_token else ""
    return ", ".join(repr(name) for name in names) + more


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Swallow the kfp client's own "… details: URL" prints: the commands print their own, stable lines."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def _api_errors(action: str, token_given: bool = True) -> Iterator[None]:
    """Turn the kfp client's API and transport exceptions into a one-line :class:`RemoteError`."""
    try:
        yield
    except kfp_server_api.ApiException as error:
        raise _api_error(action, error, token_given) from None
    except urllib3.exceptions.HTTPError as error:
        raise _connection_error(action, error) from None


def _api_error(action: str, error: kfp_server_api.ApiException, token_given: bool = True) -> RemoteError:
    status = error.status or 0
    said = _server_message(error)
    if status == HTTPStatus.UNAUTHORIZED:
        given = "the token was rejected" if token_given else f"no token was given (--token-file or ${TOKEN_ENV})"
        return RemoteError(
            f"could not {action}: HTTP 401 Unauthorized, expected a valid bearer token and {given}{said}"
        )
    if status == HTTPStatus.FORBIDDEN:
        return RemoteError(f"could not {action}: HTTP 403 Forbidden, the token is not allowed to do this{said}")
    if status == 0:
        return RemoteError(f"could not {action}: {_one_line(str(error.reason))}")
    return RemoteError(f"could not {action}: HTTP {status} {error.reason or ''}".rstrip() + said)


def _connection_error(action: str, error: urllib3.exceptions.HTTPError) -> RemoteError:
    reason = getattr(error, "reason", None) or error
    text = re.sub(r"^<[^>]*>:\s*", "", str(reason))
    return RemoteError(f"could not {action}: endpoint unreachable ({_one_line(text)})")


def _server_message(error: kfp_server_api.ApiException) -> str:
    """``: <what the server said>`` from a KFP error body (JSON with ``message``), or '' when it said nothing."""
    body = error.body.decode("utf-8", "replace") if isinstance(error.body, bytes) else (error.body or "")
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        body = str(payload.get("message") or payload.get("error") or "")
    elif body.lstrip().startswith("<"):
        body = "an HTML page (a login page or a proxy error, not the KFP API)"
    text = _one_line(body)
    return f"; server said: {text}" if text else ""


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
