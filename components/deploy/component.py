"""KFP component: deploy_model."""

from kfp.dsl import Artifact, Dataset, Input, Output

from components.kfp_base import project_component


@project_component
def deploy_model(dataset: Input[Dataset], evaluation: Input[Artifact], store_uri: str, model_name: str, version: int, model_uri: str, run_id: str,
                 target: str, serving_port: int, local_state_dir: str, kserve_namespace: str, serving_gpus: int,
                 deployment_mode: str, canary_percent: int, collect_uri: str, collect_fraction: float,
                 collect_images_fraction: float, endpoint: Output[Artifact], serving_cpu: str = "", serving_memory: str = "",
                 serving_scale_target: int = 0) -> str:
    """Serve the registered version, smoke-test it over REST, then make it the production version.

    Args:
        dataset: The prepared data set (test images for the smoke request).
        evaluation: The evaluate step's result: production is promoted only while it is still the champion judged there.
        store_uri: Store URI holding the registry.
        model_name: Registry and endpoint name.
        version: The registry version to deploy.
        model_uri: Store URI of that version.
        run_id: Pipeline run id, recorded with the promotion.
        target: local (a KServe server process on this machine) or kserve (an InferenceService).
        serving_port: HTTP port of the local server.
        local_state_dir: Where the local server's pid and log are kept.
        kserve_namespace: Namespace of the InferenceService (target kserve).
        serving_gpus: GPUs per predictor replica (target kserve).
        deployment_mode: Knative (canary rollouts) or Standard (rolling updates); Serverless and RawDeployment are accepted.
        canary_percent: Traffic share of a new revision before promotion (Knative mode; 0: no canary).
        collect_uri: Store URI the server collects request statistics into ("": no collection).
        collect_fraction: Fraction of requests collected.
        collect_images_fraction: Fraction of requests whose preprocessed images are saved too.
        endpoint: The deployment record (URL, version, smoke results, sizing).
        serving_cpu: CPU request and limit per predictor replica (target kserve; "": derived from the version's profile).
        serving_memory: Memory request and limit per predictor replica (target kserve; "": derived from the version's profile).
        serving_scale_target: Autoscaling target per replica (target kserve; 0: derived from the version's profile).
    """
    import json

    from components.deploy.step import KServeTarget, deploy, judged_champion
    from components.monitoring.collection import CollectionOptions
    from components.store import open_store

    kserve = KServeTarget(kserve_namespace, serving_gpus, deployment_mode, canary_percent, serving_cpu, serving_memory,
                          serving_scale_target)
    record = deploy(target, open_store(store_uri), dataset.metadata["prefix"], model_name, version, model_uri, run_id,
                    serving_port, local_state_dir, judged_champion(evaluation.path), kserve,
                    CollectionOptions(collect_uri, collect_fraction, collect_images_fraction))
    with open(endpoint.path, "w") as f:
        json.dump(record, f, indent=2)
    endpoint.metadata.update({"url": record["url"], "version": record["version"]})
    print(record["summary"])  # deployed, or kept production when this version's weights are production's
    return record["url"]
