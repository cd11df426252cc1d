"""The command line: ``python -m pipelines compile|run|stop …``.

    python -m pipelines compile --output pipeline.yaml [--pipeline training|monitoring]
    python -m pipelines run --local [--pipeline training|monitoring] [--data-uri URI] [--workdir DIR] [--param NAME=VALUE …] [-v]
    python -m pipelines render --output-dir DIR [--version N] [--manifest PATH] [--param NAME=VALUE …]
    python -m pipelines stop [--workdir DIR]   (without --workdir: every server this checkout started)
    python -m pipelines data put (FOLDER | --sample) --to URI
    python -m pipelines registry list|show|promote|rollback|history --store URI --model NAME …
    python -m pipelines monitor --store URI --model NAME [--since 24h] [--out DIR]   (the drift report)
    python -m pipelines upload|submit|schedule --namespace NS …   (a Kubeflow Pipelines endpoint)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.errors import ProjectError
from components.training import PROGRESS_TTY_ENV
from pipelines import catalog
from pipelines.data_cli import add_data_commands
from pipelines.monitor_cli import add_monitor_command
from pipelines.params import ParamError, parse_params
from pipelines.registry_cli import add_registry_commands
from pipelines.remote_cli import add_remote_commands

if TYPE_CHECKING:
    from components.deploy.sizing import Sizing
    from components.deploy.step import KServeTarget
    from components.monitoring.collection import CollectionOptions
    from components.profile import ProfileSettings


def pipeline_signature() -> dict[str, type]:
    """The training pipeline's parameters, name → type."""
    return catalog.signature(catalog.TRAINING)


def compile_pipeline(output: Path) -> Path:
    """Write the training pipeline's package (YAML) that the Kubeflow UI uploads."""
    return catalog.compile_to(catalog.TRAINING, output)


def cmd_compile(args: argparse.Namespace) -> None:
    print(f"wrote {catalog.compile_to(args.pipeline, args.output)}")


def cmd_run(args: argparse.Namespace) -> int:
    """Check the parameters, then run the pipeline in a supervised child (``--in-process``) that a signal stops whole."""
    from pipelines import local_run

    if not args.local:
        raise SystemExit("error: only --local runs start here; use `python -m pipelines submit` for a Kubeflow cluster")
    if args.pipeline == catalog.MONITORING:
        return run_monitoring(args)
    overrides = parse_params(args.param, pipeline_signature())
    model_name = check_model_name(overrides)  # refused here, not by a step after training
    kserve_target({**pipeline_defaults(), **overrides})  # so are a bad deployment_mode and canary_percent
    collection_options({**pipeline_defaults(), **overrides})  # and bad collection fractions
    profile_options({**pipeline_defaults(), **overrides})  # and a bad latency budget or profile length
    if not args.in_process:
        return local_run.run_supervised([sys.executable, "-m", "pipelines", *run_argv(args), "--in-process"])
    from pipelines.run_folder import new_run_folder

    if sys.stdout.isatty():
        os.environ[PROGRESS_TTY_ENV] = "1"  # the training step draws its progress bar on this terminal
    arguments = local_run.local_arguments(args.workdir, args.data_uri, overrides)
    store = local_run.open_run_store(arguments)  # this process's one client; the steps open their own
    local_run.check_before_run({**pipeline_defaults(), **arguments}, store, sys.stdout)  # seconds, not after training
    run_root = local_run.new_run_root(args.workdir)
    folder = new_run_folder(args.workdir, run_root.name)
    with local_run.stopping_descendants_on_sigterm():
        reports = local_run.run_followed(run_root, folder, arguments, verbose=args.verbose)
    summary = local_run.summarize(store, args.workdir, arguments, model_name, local_run.pushed_version(run_root), reports)
    print(local_run.format_summary(summary, args.workdir))
    return 0


def run_monitoring(args: argparse.Namespace) -> int:
    """``run --local --pipeline monitoring``: the drift report of what the local server collected (and a local
    training run on drift, when allowed), supervised like a training run."""
    from pipelines import local_run

    arguments = local_run.monitoring_arguments(args.workdir, parse_params(args.param, catalog.signature(catalog.MONITORING)))
    catalog.check_monitoring_params({**catalog.defaults(catalog.MONITORING), **arguments})
    if not args.in_process:
        return local_run.run_supervised([sys.executable, "-m", "pipelines", *run_argv(args), "--in-process"])
    from pipelines.run_folder import new_run_folder

    run_root = local_run.new_run_root(args.workdir)
    folder = new_run_folder(args.workdir, run_root.name)
    with local_run.stopping_descendants_on_sigterm():
        reports = local_run.run_followed(run_root, folder, arguments, verbose=args.verbose, pipeline=catalog.load(catalog.MONITORING))
    print(local_run.format_monitoring_summary(run_root, arguments, reports))
    return 0


def check_model_name(overrides: Mapping[str, object]) -> str:
    """The run's model name (given or the pipeline's default), if it is a valid registry name."""
    from components.registry import validate_model_name

    name = overrides.get("model_name", pipeline_defaults()["model_name"])
    try:
        return validate_model_name(name)
    except ValueError as exc:
        raise ParamError(f"pipeline parameter 'model_name': {exc}") from None


def check_remote_params(params: Mapping[str, Any]) -> None:
    """What ``run --local`` refuses before any step, refused before a cluster run is submitted or scheduled."""
    check_model_name(params)
    kserve_target({**pipeline_defaults(), **params})
    collection_options({**pipeline_defaults(), **params})
    profile_options({**pipeline_defaults(), **params})


def kserve_target(params: Mapping[str, Any]) -> KServeTarget:
    """The deploy step's KServe settings from pipeline parameters (the deploy step builds the same), so that
    run, render, submit and schedule refuse a bad deployment_mode, canary_percent or resource override before any work."""
    from components.deploy.step import KServeTarget

    try:
        return KServeTarget(params["kserve_namespace"], params["serving_gpus"], params["deployment_mode"], params["canary_percent"],
                            params["serving_cpu"], params["serving_memory"], params["serving_scale_target"])
    except ValueError as exc:
        raise ParamError(f"pipeline parameters deployment_mode/canary_percent/serving_*: {exc}") from None


def profile_options(params: Mapping[str, Any]) -> ProfileSettings | None:
    """How the push step profiles the version, from pipeline parameters (the push step builds the same)."""
    from components.push.push import profile_settings

    try:
        return profile_settings(params["serving_latency_budget_ms"], params["profile_seconds"])
    except ValueError as exc:
        raise ParamError(f"pipeline parameters serving_latency_budget_ms/profile_seconds: {exc}") from None


def collection_options(params: Mapping[str, Any]) -> CollectionOptions:
    """What the model server collects, from pipeline parameters (the deploy step builds the same)."""
    from components.monitoring.collection import CollectionOptions

    try:
        return CollectionOptions(params["collect_uri"], params["collect_fraction"], params["collect_images_fraction"])
    except ValueError as exc:
        raise ParamError(f"pipeline parameters collect_fraction/collect_images_fraction: {exc}") from None


def run_argv(args: argparse.Namespace) -> list[str]:
    """The ``run`` command line that ``args`` came from (for the supervised child)."""
    argv = ["run", "--local", "--pipeline", args.pipeline, "--workdir", str(args.workdir)]
    if args.data_uri:
        argv += ["--data-uri", args.data_uri]
    if args.verbose:
        argv.append("--verbose")
    for pair in args.param:
        argv += ["--param", pair]
    return argv


def pipeline_defaults() -> dict[str, object]:
    return catalog.defaults(catalog.TRAINING)


def cmd_render(args: argparse.Namespace) -> None:
    """Write the manifests the cluster steps would create for these parameters, for review."""
    from components.deploy.inferenceservice import InferenceServiceSettings
    from components.deploy.render import write_manifests
    from components.registry import version_key
    from components.training.render import render_training

    p = {**pipeline_defaults(), "store_uri": "https://ACCOUNT.blob.core.windows.net/models", **parse_params(args.param, pipeline_signature())}
    target = kserve_target(p)
    sizing = rendered_sizing(target, args.manifest, args.version)
    settings = InferenceServiceSettings(
        name=p["model_name"], namespace=p["kserve_namespace"], model_name=p["model_name"], model_version=args.version,
        model_uri=f"{str(p['store_uri']).rstrip('/')}/{version_key(p['model_name'], args.version)}",
        manifest_sha256=args.manifest_sha256, collection=collection_options(p),
        **target.settings_fields(sizing),
    )
    for path in write_manifests(args.output_dir, settings):
        print(f"wrote {path}")
    print("predictor sizing (requests = limits):")
    for line in sizing.describe(target.scale_metric):
        print(f"  {line}")
    for path in render_training(p, args.output_dir, namespace=p["kserve_namespace"]):  # TrainJob + runtime; PyTorchJob if num_ps=1
        print(f"wrote {path}")


def rendered_sizing(target: KServeTarget, manifest: Path | None, version: int) -> Sizing:
    """What the deploy step would size the predictor to: from the profile in the version's ``MANIFEST.json`` when
    one is given (``registry show --json`` prints it), else the defaults a version without a profile gets."""
    import json

    if manifest is None:
        return target.sizing(None)
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected --manifest {manifest} to be a version's MANIFEST.json, got invalid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version", version) != version:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"expected --manifest {manifest} to be the MANIFEST.json of version {version} (--version), found version {found}")
    return target.sizing(data.get("profile"), f"profile v{version}")


def cmd_stop(args: argparse.Namespace) -> None:
    """Stop the server of ``--workdir``, or without it every server this checkout started (any work dir)."""
    from components.deploy.local import CHECKOUT, stop, stop_all
    from pipelines.local_run import DEFAULT_WORKDIR

    if args.workdir is not None:
        found = stop(args.workdir.resolve() / "serving")
        stopped = [found] if found else []
    else:  # the default work dir first: it also holds servers started before servers were marked
        stopped = [e for e in [stop(DEFAULT_WORKDIR.resolve() / "serving")] if e] + stop_all()
    for endpoint in stopped:
        print(f"stopped the server at {endpoint.url} (pid {endpoint.pid}, log {endpoint.log})")
    if not stopped:
        where = args.workdir if args.workdir is not None else f"any work dir of {CHECKOUT}"
        print(f"no local server is running (looked in {where})")


class RunHelp(argparse.Action):
    """``run --help``: the usual help, then the pipeline's parameters with their defaults and descriptions
    (the pipeline is imported only now, so other commands' help stays quick)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help and the pipeline's parameters")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        import shutil

        from pipelines.params import parameter_help

        set_by_run = {"data_uri": "--data-uri; default: the bundled sample", "store_uri": "default: WORKDIR/store",
                      "local_state_dir": "default: WORKDIR/serving", "code_version": "set to the git commit",
                      "local_workdir": "--workdir", "retrain_target": "local"}
        width = shutil.get_terminal_size((100, 24)).columns
        parser.print_help()
        for name in catalog.PIPELINES:
            table = parameter_help(catalog.load(name).component_spec.inputs or {}, width, set_by_run)
            which = "" if name == catalog.TRAINING else f" of --pipeline {name}"
            print(f"\npipeline parameters{which} (--param NAME=VALUE; shown with their defaults):\n{table}")
        parser.exit()


def add_pipeline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", choices=catalog.PIPELINES, default=catalog.TRAINING,
                        help="training (prepare, train, evaluate, push, deploy) or monitoring (drift report, "
                        "and a training run on drift when allowed); default: %(default)s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description="Compile, run and operate the training pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compile", help="write the pipeline package for the Kubeflow UI")
    p.add_argument("--output", type=Path, required=True, help="path of the YAML package to write")
    add_pipeline_option(p)
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser("run", help="run the pipeline (--local: on this machine under kfp.local)", add_help=False)
    p.add_argument("-h", "--help", action=RunHelp)
    p.add_argument("--local", action="store_true", help="run under kfp.local with local processes")
    add_pipeline_option(p)
    p.add_argument("--data-uri", help="raw data (default: the bundled digits sample, written under WORKDIR/data)")
    p.add_argument("--workdir", type=Path, default=Path(".work"), help="local store, KFP outputs and server state")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a pipeline parameter (repeatable; listed below)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show kfp.local's own output (every step's log as it runs) instead of one line per step")
    # Internal: the supervised child that runs the pipeline itself (see local_run.run_supervised).
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("render", help="write the manifests the cluster steps would create (for review)")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--version", type=int, default=1, help="registry version the InferenceService would serve")
    p.add_argument("--manifest-sha256", metavar="DIGEST", help="pin the version to this manifest digest, as the deploy step "
                   "does (`python -m pipelines registry show` prints it); without it the rendered URI is unpinned")
    p.add_argument("--manifest", type=Path, metavar="PATH", help="the version's MANIFEST.json (`python -m pipelines registry "
                   "show --version N --json` prints it): size the predictor from its profile, as the deploy step does; "
                   "without it the sizing is the default of a version with no profile")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a pipeline parameter (repeatable)")
    p.set_defaults(func=cmd_render)
    p = sub.add_parser("stop", help="stop the local model servers that `run --local` started")
    p.add_argument("--workdir", type=Path, help="only the server of this work dir (default: every server this checkout "
                   "started, under any work dir)")
    p.set_defaults(func=cmd_stop)
    add_data_commands(sub)
    add_registry_commands(sub)
    add_monitor_command(sub)
    add_remote_commands(sub, catalog.signature, lambda name, path: catalog.compile_to(name, Path(path)),
                        check_params_fn=catalog.check_params, pipelines=catalog.PIPELINES, companions=catalog.COMPANIONS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ProjectError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    except OSError as exc:  # a local store's folder that cannot be read or written (permissions, a full disk…)
        where = f"{exc.filename}: " if exc.filename else ""
        sys.exit(f"error: {where}{exc.strerror or exc}")
    except RuntimeError as exc:
        # kfp.local raises RuntimeError when a task fails; the task's own log above says why.
        sys.exit(f"error: the pipeline failed: {exc}")
    except KeyboardInterrupt:
        print("interrupted by SIGINT", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    if code:
        sys.exit(code)
