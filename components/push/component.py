"""KFP component: push_model."""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Model

from components.kfp_base import project_component


@project_component
def push_model(model: Input[Model], dataset: Input[Dataset], evaluation: Input[Artifact], store_uri: str, model_name: str,
               run_id: str, code_version: str, latency_budget_ms: float = 100.0,
               profile_seconds: float = 2.0) -> NamedTuple("Outputs", version=int, model_uri=str):
    """Register the candidate as a new immutable version with its metrics, verdict and lineage, and the training
    split's statistics that drift reports compare served images with (monitoring.json).

    Args:
        model: The candidate model.
        dataset: The prepared data set (its content hash goes into the lineage; its training split is streamed once
            for the monitoring reference).
        evaluation: The evaluation step's full result.
        store_uri: Store URI holding the registry.
        model_name: Registry name.
        run_id: Pipeline run id, recorded in the lineage.
        code_version: Git commit of the code, recorded in the lineage.
        latency_budget_ms: p99 latency the profile holds each runtime to (the concurrency per replica comes from it).
        profile_seconds: Seconds of load per concurrency level when profiling each runtime; 0: no profile.
    """
    import json
    from collections import namedtuple

    from components.push.push import profile_settings
    from components.push.push import push_model as push
    from components.store import open_store

    with open(evaluation.path) as f:
        result = json.load(f)
    lineage = {"run_id": run_id, "code_version": code_version, "dataset_hash": dataset.metadata["content_hash"],
               "dataset_prefix": dataset.metadata["prefix"], "training": dict(model.metadata)}
    pushed = push(open_store(store_uri), model_name, model.metadata["prefix"], result, result["verdict"], lineage,
                  dataset_prefix=dataset.metadata["prefix"], profile=profile_settings(latency_budget_ms, profile_seconds))
    print(pushed.describe())
    return namedtuple("Outputs", "version model_uri")(pushed.version, pushed.uri)
