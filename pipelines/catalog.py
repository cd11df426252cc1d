"""The project's pipelines by the name ``--pipeline`` takes: ``training`` (the default) and ``monitoring``.

compile, run, upload, submit and schedule all look a pipeline up here, so both compile, upload and schedule
the same way. The pipeline modules are imported only when a command needs one (``--help`` stays quick).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.params import ParamError, signature_from_component_inputs

TRAINING, MONITORING = "training", "monitoring"
PIPELINES = (TRAINING, MONITORING)
# A monitoring run starts runs of the training pipeline by version: submit and schedule upload the training
# pipeline of the same commit first and pass its name and version in these parameters (unless given).
COMPANIONS = {MONITORING: (TRAINING, "training_pipeline", "training_version")}


def load(name: str) -> Any:
    """The ``@dsl.pipeline`` function called ``name``."""
    if name == TRAINING:
        from pipelines.pipeline import training_pipeline

        return training_pipeline
    if name == MONITORING:
        from pipelines.monitoring_pipeline import monitoring_pipeline

        return monitoring_pipeline
    raise ParamError(f"expected a pipeline in {PIPELINES}, got {name!r}")


def signature(name: str) -> dict[str, type]:
    """The pipeline's parameters, name → Python type (what ``--param`` parses against)."""
    return signature_from_component_inputs(load(name).component_spec.inputs or {})


def defaults(name: str) -> dict[str, Any]:
    params = inspect.signature(load(name).pipeline_func).parameters.items()
    return {key: p.default for key, p in params if p.default is not inspect.Parameter.empty}


def compile_to(name: str, output: Path) -> Path:
    """Write the pipeline package (YAML) that the Kubeflow UI uploads, with ``code_version`` set to the commit."""
    from kfp import compiler

    from pipelines.local_run import git_commit

    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load(name), str(output), pipeline_parameters={"code_version": git_commit()})
    return output


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """What the pipeline's steps would refuse, refused before a run starts (locally or on a cluster)."""
    from pipelines.cli import check_remote_params

    if name == TRAINING:
        check_remote_params(params)
    elif name == MONITORING:
        check_monitoring_params({**defaults(MONITORING), **params})


def check_monitoring_params(params: Mapping[str, Any]) -> None:
    """A bad window, threshold, retrain target or training argument: refused before the report runs."""
    from components.monitoring.drift import window
    from pipelines.cli import check_model_name, check_remote_params
    from pipelines.retrain import check_target, training_arguments

    check_model_name(params)
    try:
        window(params["since"] or None, params["until"] or None)
    except ValueError as exc:
        raise ParamError(f"monitoring pipeline parameters: {exc}") from None
    if min(params["psi_threshold"], params["class_psi_threshold"], params["min_records"]) < 0:
        raise ParamError("monitoring pipeline parameters: expected psi_threshold, class_psi_threshold and min_records "
                         f"of 0 or more, got {params['psi_threshold']}, {params['class_psi_threshold']}, {params['min_records']}")
    target = check_target(params["retrain_target"])
    if params["retrain_on_drift"]:
        arguments = training_arguments(params["retrain_params"], params.get("store_uri", ""), params["model_name"],
                                       signature(TRAINING))
        check_remote_params(arguments)
        if target == "kfp" and not arguments.get("data_uri"):
            raise ParamError("retrain_params must set data_uri for retrain_target 'kfp': a cluster training run "
                             "reads its raw data from Blob")
