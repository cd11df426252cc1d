"""Start a training run when the monitoring pipeline found drift, through the code the CLI uses.

Two targets, as for the training pipeline itself:

- ``kfp``: a run of an uploaded version of the training pipeline, started with :func:`pipelines.remote.submit`
  (what ``python -m pipelines submit`` does). Inside the cluster the step authenticates with the Kubeflow
  Pipelines service-account token that the profile's PodDefault ``access-ml-pipeline`` mounts into a pod
  labelled ``access-ml-pipeline: "true"`` (the monitoring pipeline sets the label), in the namespace the pod
  runs in (``POD_NAMESPACE``, from the downward API).
- ``local``: ``python -m pipelines run --local`` in a child process, the command a person types, against
  the same work dir; its output is the step's log.

The training run's arguments are the monitoring run's store and model plus ``retrain_params``, checked
against the training pipeline's parameters before anything starts (:func:`training_arguments`).

A KFP step runs with ``_KFP_RUNTIME=true``, which makes the ``kfp`` package load only what a step needs: not
its client, nor the DSL that the CLI's parameter checks read the training pipeline with. So the step calls
:func:`start_training_in_child`, which runs this module (``python -m pipelines.retrain``) without that
variable. This module itself imports nothing of kfp at the top.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.errors import ProjectError
from pipelines.params import ParamError, convert_value

TARGETS = ("kfp", "local")
IN_CLUSTER_ENDPOINT = "http://ml-pipeline-ui.kubeflow.svc.cluster.local"  # the API behind the UI's /apis
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # set by the PodDefault, read by kfp.Client too
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
NAMESPACE_ENV = "POD_NAMESPACE"
LOCAL_OUTCOME = "local v"  # what start_training returns after a local run: "local v3" (the version it registered)
# Fixed by the monitoring run: the training run registers into the registry that is being watched.
FROM_MONITORING = ("store_uri", "model_name")


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ParamError(f"expected retrain_target in {TARGETS}, got {target!r}")
    return target


def training_arguments(retrain_params: Mapping[str, Any], store_uri: str, model_name: str,
                       signature: Mapping[str, type]) -> dict[str, Any]:
    """The training run's arguments: ``retrain_params`` (names and types of the training pipeline's
    parameters; a string is converted as ``--param`` would) plus the monitoring run's store and model."""
    arguments: dict[str, Any] = {}
    for name, value in retrain_params.items():
        if name in FROM_MONITORING:
            raise ParamError(f"retrain_params may not set {name!r}: the training run uses the monitoring run's "
                             f"{name} so that it registers into the registry being watched")
        if name not in signature:
            raise ParamError(f"retrain_params: unknown training pipeline parameter {name!r}; expected one of: "
                             f"{', '.join(sorted(signature))}")
        arguments[name] = _typed(name, value, signature[name])
    return {**arguments, "store_uri": store_uri, "model_name": model_name}


def _typed(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, str) and kind is not str:
        return convert_value(name, value, kind)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # a KFP dict parameter carries every number as a double (protobuf Struct)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ParamError(f"retrain_params: training pipeline parameter {name!r} expects {kind.__name__}, got {value!r}")
    return value


def submit_training(arguments: Mapping[str, Any], pipeline_name: str, version_name: str, experiment: str,
                    endpoint: str = "", namespace: str = "", environ: Mapping[str, str] = os.environ) -> str:
    """Start a run of version ``version_name`` of the uploaded training pipeline; return the run id.

    ``endpoint``: the KFP API ("" for ``$KF_PIPELINES_ENDPOINT``, else the in-cluster address);
    ``namespace``: "" for the pod's own (``$POD_NAMESPACE``). The token is the pod's service-account token
    when the PodDefault mounted one (``$KF_PIPELINES_SA_TOKEN_PATH``), else none.
    """
    from pipelines import remote

    if not arguments.get("data_uri"):
        raise ParamError("retrain_params must set data_uri: a cluster training run reads its raw data from Blob")
    if not version_name:
        raise ParamError(f"expected training_version, the version of pipeline {pipeline_name!r} to run (`python -m "
                         "pipelines submit|schedule --pipeline monitoring` uploads it and fills it in); got none")
    token_path = Path(environ.get(SA_TOKEN_PATH_ENV, SA_TOKEN_PATH))
    token = remote.read_token(token_path) if token_path.is_file() else None
    host = endpoint or environ.get(remote.ENDPOINT_ENV) or IN_CLUSTER_ENDPOINT
    client = remote.connect(host, namespace or environ.get(NAMESPACE_ENV), token)
    pipeline_id = remote.find_pipeline_id(client, pipeline_name)
    version_id = remote.find_version_id(client, pipeline_id, version_name) if pipeline_id else None
    if version_id is None:
        raise remote.RemoteError(f"expected version {version_name!r} of pipeline {pipeline_name!r} in namespace "
                                 f"{client.namespace!r}, found none; upload it with `python -m pipelines upload`")
    version = remote.PipelineVersionRef(pipeline_id, version_id, version_name, created=False)
    run_name = f"{pipeline_name} {version_name} retrain on drift {datetime.now(UTC):%Y-%m-%d %H:%M:%SZ}"
    return remote.submit(client, version, experiment, arguments, run_name)


def run_training_locally(arguments: Mapping[str, Any], workdir: str) -> int:
    """``python -m pipelines run --local --workdir WORKDIR`` with ``arguments`` as ``--param``s; returns the
    registry version it pushed, and raises when it fails (its own output, above in the log, says why)."""
    from components.registry import Registry
    from components.store import open_store

    registry = Registry(open_store(arguments["store_uri"]), arguments["model_name"])
    before = set(registry.versions())
    argv = [sys.executable, "-m", "pipelines", "run", "--local", "--workdir", workdir]
    for name, value in arguments.items():
        if name == "data_uri":
            argv += ["--data-uri", str(value)]  # not as a --param: run would write the bundled sample first
        else:
            argv += ["--param", f"{name}={param_text(value)}"]
    print("starting:", " ".join(argv[1:]), flush=True)
    code = subprocess.run(argv, check=False).returncode
    if code:
        raise ProjectError(f"the local training run failed with exit code {code}; its output is above")
    pushed = sorted(set(registry.versions()) - before)
    if not pushed:
        raise ProjectError(f"expected the local training run to register a version of {arguments['model_name']!r}, found none")
    return pushed[-1]


def param_text(value: Any) -> str:
    """A typed argument as ``--param NAME=TEXT`` takes it back (:func:`pipelines.params.parse_params`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def start_training(target: str, retrain_params: Mapping[str, Any], store_uri: str, model_name: str,
                   training_pipeline: str, training_version: str, experiment: str, kfp_endpoint: str = "",
                   local_workdir: str = "") -> str:
    """Check the training run's arguments as the CLI does, then start it on ``target``. Returns the KFP run id,
    or ``local vN`` (the version it registered) once a local run has ended."""
    from pipelines.cli import check_remote_params, pipeline_signature

    check_target(target)
    arguments = training_arguments(retrain_params, store_uri, model_name, pipeline_signature())
    check_remote_params(arguments)  # what run --local and submit refuse before any step
    if target == "kfp":
        return submit_training(arguments, training_pipeline, training_version, experiment, kfp_endpoint)
    if not local_workdir:
        raise ParamError("expected local_workdir for retrain_target 'local' (run --local fills it in); got none")
    return f"{LOCAL_OUTCOME}{run_training_locally(arguments, local_workdir)}"


def local_version(outcome: str | None) -> int | None:
    """The version a local training run registered, from :func:`start_training`'s outcome; None for a KFP run id."""
    return int(outcome.removeprefix(LOCAL_OUTCOME)) if outcome and outcome.startswith(LOCAL_OUTCOME) else None


RUNTIME_ENV = "_KFP_RUNTIME"


def start_training_in_child(**kwargs: Any) -> str:
    """:func:`start_training` in a child interpreter with the CLI's full kfp (see the module's docstring);
    its output is the step's log. Raises with the child's error line when it fails."""
    env = {name: value for name, value in os.environ.items() if name != RUNTIME_ENV}
    with tempfile.TemporaryDirectory(prefix="retrain-") as folder:
        result = Path(folder) / "result"
        child = subprocess.run([sys.executable, "-m", "pipelines.retrain", json.dumps(kwargs), str(result)], env=env,
                               stderr=subprocess.PIPE, text=True, check=False)
        sys.stderr.write(child.stderr)
        if child.returncode:
            lines = [line for line in child.stderr.splitlines() if line.strip()]
            raise ProjectError(lines[-1].removeprefix("error: ") if lines else f"exit code {child.returncode}")
        return result.read_text()


def main(argv: list[str]) -> int:
    """``python -m pipelines.retrain KWARGS_JSON RESULT_FILE``: the child of :func:`start_training_in_child`."""
    try:
        outcome = start_training(**json.loads(argv[0]))
    except ProjectError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    Path(argv[1]).write_text(outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
