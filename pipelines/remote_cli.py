"""The ``upload``, ``submit`` and ``schedule`` commands of ``python -m pipelines``: the pipeline on a KFP endpoint.

The main CLI adds them with :func:`add_remote_commands` and dispatches with ``sys.exit(args.func(args))``. Each
command returns an exit code: 0 on success, 1 on any expected failure, after printing a one-line reason to
stderr (no traceback); argparse itself exits 2 on a usage error. Results (URLs, ids) go to stdout.

Every run and recurring run points at an uploaded pipeline version, named after the git commit, so a run in the
UI says which code it ran; ``submit`` and ``schedule`` upload that version first when it is missing.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from components.errors import ProjectError
from pipelines import remote
from pipelines.cron import normalize_cron
from pipelines.params import parse_params

SignatureFn = Callable[[str], Mapping[str, type]]  # pipeline name -> its parameters
CompileFn = Callable[[str, str], None]  # pipeline name, path of the package to write
CheckFn = Callable[[str, Mapping[str, Any]], None]  # raises ProjectError for parameter values the pipeline would refuse
# pipeline name -> (companion pipeline, parameter for its name, parameter for its version): see _with_companion
Companions = Mapping[str, tuple[str, str, str]]
Handler = Callable[[argparse.Namespace], int]

REPO_DIR = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = "Default"
DEFAULT_TIMEOUT_S = 7200.0
DEFAULT_POLL_S = 15.0
MAX_CONCURRENCY_LIMIT = 10  # the KFP API accepts 1..10
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def add_remote_commands(
    subparsers: Any,
    pipeline_signature_fn: SignatureFn,
    compile_fn: CompileFn,
    repo_dir: Path = REPO_DIR,
    check_params_fn: CheckFn = lambda pipeline, params: None,
    pipelines: tuple[str, ...] = ("training",),
    companions: Companions | None = None,
) -> None:
    """Add ``upload``, ``submit`` and ``schedule`` to the main parser's subparsers.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.
        pipeline_signature_fn: Returns a pipeline's parameters, name → Python type; called only by the
            commands that take ``--param``, so ``--help`` never imports the pipeline.
        compile_fn: Writes a pipeline's compiled package (YAML) to the path it is given (a ``str``).
        repo_dir: The git checkout whose commit names pipeline versions.
        check_params_fn: Refuses a pipeline's parameter values that its steps would refuse.
        pipelines: The names ``--pipeline`` takes; the first is the default.
        companions: Pipelines whose runs start runs of another pipeline by version: that one is uploaded
            at the same commit first and named in two of the run's parameters (unless they are given).
    """
    companions = companions or {}
    connection, package, run = _connection_options(), _package_options(pipelines), _run_options()
    upload = subparsers.add_parser(
        "upload", parents=[connection, package], help="upload the pipeline as a version named after the git commit",
        description="Create the pipeline in the namespace if absent, then upload the package as a version named "
        "after the git commit. Idempotent: an existing version of that name is left as it is.",
    )
    upload.set_defaults(func=_guarded(functools.partial(_upload_command, compile_fn=compile_fn, repo_dir=repo_dir)))
    submit = subparsers.add_parser(
        "submit", parents=[connection, package, run], help="start a run (uploading its version first if needed)",
        description="Start a run of the pipeline version for this commit and print its URL; with --wait, poll "
        "until it ends and exit non-zero unless it SUCCEEDED (failed, error, skipped or cancelled runs fail).",
    )
    _add_submit_options(submit)
    schedule = subparsers.add_parser(
        "schedule", parents=[connection, package, run], help="create or update a recurring run by name",
        description="Create the recurring run NAME in the experiment, or replace it when its pipeline version, "
        "cron, parameters or settings differ, so one schedule per name exists and lives in the repository.",
    )
    _add_schedule_options(schedule)
    commands = {"submit": (submit, _submit_command), "schedule": (schedule, _schedule_command)}
    for parser, command in commands.values():
        handler = functools.partial(
            command, signature_fn=pipeline_signature_fn, compile_fn=compile_fn, repo_dir=repo_dir,
            check_fn=check_params_fn, companions=companions,
        )
        parser.set_defaults(func=_guarded(handler))


# --- options ----------------------------------------------------------------------------------------------


def _connection_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--host", help=f"KFP API URL, e.g. https://kubeflow.example.com/pipeline (default: ${remote.ENDPOINT_ENV})"
    )
    group.add_argument("--namespace", help="Kubeflow profile namespace to work in (required)")
    group.add_argument(
        "--token-file", type=Path, help=f"file holding the bearer token (default: ${remote.TOKEN_ENV}; none if unset)"
    )
    return parser


def _package_options(pipelines: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("pipeline package")
    group.add_argument("--pipeline", choices=pipelines, default=pipelines[0],
                       help="which of the project's pipelines (default: %(default)s)")
    group.add_argument("--package", type=Path, help="compiled package to use (default: compile the pipeline now)")
    group.add_argument("--pipeline-name", help="pipeline name in KFP (default: the name in the package)")
    group.add_argument(
        "--version-name", help="pipeline version name (default: the 12-character git commit, -dirty-HASH if modified)"
    )
    return parser


def _run_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("run")
    group.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment name (default: %(default)s)")
    group.add_argument("--create-experiment", action="store_true", help="create the experiment if it does not exist")
    group.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline argument; repeat for more"
    )
    group.add_argument("--service-account", help="Kubernetes service account for the run's pods (default: namespace's)")
    return parser


def _add_submit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-name", help="run name (default: '<pipeline> <version> <UTC time>')")
    parser.add_argument("--wait", action="store_true", help="wait for the run to end; exit 1 unless it SUCCEEDED")
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT_S, metavar="S",
        help="with --wait: give up after S seconds, leaving the run going (default: %(default)g)",
    )
    parser.add_argument(
        "--poll", type=_positive_seconds, default=DEFAULT_POLL_S, metavar="S",
        help="with --wait: seconds between polls (default: %(default)g)",
    )


def _add_schedule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="recurring run name: the key that makes updates replace it")
    parser.add_argument(
        "--cron", required=True, metavar="EXPR",
        help="six-field cron, seconds first, in the cluster's time zone (UTC on AKS): '0 0 2 * * *' is 02:00 daily",
    )
    parser.add_argument(
        "--convert-cron", action="store_true", help="accept a five-field cron by prepending a 0 seconds field"
    )
    parser.add_argument(
        "--max-concurrency", type=_max_concurrency, default=1, metavar="N",
        help=f"runs of this schedule allowed at once, 1-{MAX_CONCURRENCY_LIMIT} (default: %(default)s)",
    )
    parser.add_argument(
        "--catchup", action="store_true", help="after a pause, start every missed run (default: only the latest)"
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _max_concurrency(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_CONCURRENCY_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_CONCURRENCY_LIMIT}, got {text!r}")
    return int(text)


# --- commands ---------------------------------------------------------------------------------------------


def _guarded(handler: Handler) -> Handler:
    """Run a command; an expected failure becomes one line on stderr and exit code 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        # urllib3 logs each connection retry as a warning; the command reports the outcome itself.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        try:
            return handler(args)
        except ProjectError as error:
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
            return EXIT_FAILED

    return run


def _upload_command(args: argparse.Namespace, compile_fn: CompileFn, repo_dir: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="pipelines-upload-") as workdir:
        package = _package(args, compile_fn, Path(workdir))
        version_name = args.version_name or remote.git_version_name(repo_dir, package.sha256)
        client = _connect(args)
        _upload(client, package, args.pipeline_name or package.pipeline_name, version_name)
    return 0


def _submit_command(
    args: argparse.Namespace, signature_fn: SignatureFn, compile_fn: CompileFn, repo_dir: Path, check_fn: CheckFn,
    companions: Companions,
) -> int:
    params = parse_params(args.param, signature_fn(args.pipeline))
    check_fn(args.pipeline, params)  # before anything is uploaded: a value the deploy step refuses would waste a training run
    with tempfile.TemporaryDirectory(prefix="pipelines-submit-") as workdir:
        package = _package(args, compile_fn, Path(workdir))
        version_name = args.version_name or remote.git_version_name(repo_dir, package.sha256)
        client = _connect(args)
        params = _with_companion(args, params, client, compile_fn, repo_dir, companions, Path(workdir))
        pipeline_name = args.pipeline_name or package.pipeline_name
        version = _upload(client, package, pipeline_name, version_name)
    run_name = args.run_name or f"{pipeline_name} {version_name} {_utc_now()}"
    run_id = remote.submit(
        client, version, args.experiment, params, run_name, args.create_experiment, args.service_account
    )
    return _wait(client, run_id, args) if args.wait else 0


def _wait(client: remote.KfpClient, run_id: str, args: argparse.Namespace) -> int:
    try:
        state = remote.wait_for_run(client, run_id, args.timeout, args.poll, on_state=_print_state)
    except KeyboardInterrupt:
        link = remote.ui_url(client, f"runs/details/{run_id}")
        print(f"error: interrupted; run {run_id} keeps running on the cluster: {link}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"Run {run_id} {state}")
    return 0


def _schedule_command(
    args: argparse.Namespace, signature_fn: SignatureFn, compile_fn: CompileFn, repo_dir: Path, check_fn: CheckFn,
    companions: Companions,
) -> int:
    cron = normalize_cron(args.cron, convert_five_fields=args.convert_cron)
    if cron != " ".join(args.cron.split()):
        print(f"Converted the five-field cron {args.cron!r} to {cron!r} (KFP reads seconds first)")
    params = parse_params(args.param, signature_fn(args.pipeline))
    check_fn(args.pipeline, params)
    with tempfile.TemporaryDirectory(prefix="pipelines-schedule-") as workdir:
        package = _package(args, compile_fn, Path(workdir))
        version_name = args.version_name or remote.git_version_name(repo_dir, package.sha256)
        client = _connect(args)
        params = _with_companion(args, params, client, compile_fn, repo_dir, companions, Path(workdir))
        version = _upload(client, package, args.pipeline_name or package.pipeline_name, version_name)
    result = remote.schedule(
        client, args.name, cron, args.experiment, version.pipeline_id, version.version_id, params,
        max_concurrency=args.max_concurrency, no_catchup=not args.catchup,
        create_experiment=args.create_experiment, service_account=args.service_account,
    )
    _print_schedule(client, args.name, cron, result)
    return 0


# --- steps shared by the commands -------------------------------------------------------------------------


def _package(args: argparse.Namespace, compile_fn: CompileFn, workdir: Path) -> remote.PackageInfo:
    """The package from ``--package``, or the pipeline compiled now into ``workdir``."""
    if args.package is not None:
        return remote.read_package(args.package)
    path = workdir / "pipeline.yaml"
    compile_fn(args.pipeline, str(path))
    return remote.read_package(path)


def _with_companion(
    args: argparse.Namespace, params: dict[str, Any], client: remote.KfpClient, compile_fn: CompileFn, repo_dir: Path,
    companions: Companions, workdir: Path,
) -> dict[str, Any]:
    """For a pipeline that starts runs of another one (monitoring → training): upload that one at this commit
    and name it in the run's parameters, so the runs it starts run the same code. Given names win."""
    if args.pipeline not in companions:
        return params
    companion, name_param, version_param = companions[args.pipeline]
    if params.get(version_param):
        return params
    path = workdir / f"{companion}.yaml"
    compile_fn(companion, str(path))
    package = remote.read_package(path)
    pipeline_name = params.get(name_param) or package.pipeline_name
    version = _upload(client, package, pipeline_name, remote.git_version_name(repo_dir, package.sha256))
    return {**params, name_param: pipeline_name, version_param: version.version_name}


def _connect(args: argparse.Namespace) -> remote.KfpClient:
    return remote.connect(args.host, args.namespace, remote.read_token(args.token_file))


def _upload(
    client: remote.KfpClient, package: remote.PackageInfo, pipeline_name: str, version_name: str
) -> remote.PipelineVersionRef:
    version = remote.upload(client, package.path, pipeline_name, version_name)
    link = remote.ui_url(client, f"pipelines/details/{version.pipeline_id}/version/{version.version_id}")
    did = "uploaded" if version.created else "already uploaded"
    print(f"Pipeline {pipeline_name!r} version {version_name!r} {did}: {link}")
    return version


def _print_state(state: str, waited_s: float) -> None:
    print(f"Run state {state} after {waited_s:.0f} s", flush=True)


def _print_schedule(client: remote.KfpClient, name: str, cron: str, result: remote.ScheduleResult) -> None:
    link = remote.ui_url(client, f"recurringrun/details/{result.recurring_run_id}")
    changes = f" ({'; '.join(result.changes)})" if result.changes else ""
    print(f"Recurring run {name!r} {result.action}{changes}, cron {cron!r}: {link}")


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
