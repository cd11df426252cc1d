"""The pipeline: prepare → train → evaluate → push → (if accepted) deploy. Wiring only."""

# No `from __future__ import annotations` here: kfp reads the parameter annotations as real types.


from kfp import dsl, kubernetes

from components.cluster import WORKLOAD_IDENTITY_LABEL, project_image
from components.data.component import prepare_data
from components.data.prepare import PrepareConfig
from components.deploy.component import deploy_model
from components.evaluation.component import evaluate_model
from components.push.component import push_model
from components.training.component import train_model
from components.training.params import TRAIN_DEFAULTS, knobs_from_pipeline

PREPARE_DEFAULTS = PrepareConfig()  # the prepare step's settings default to the one place that defines them
PIPELINE_NAME = "digits-ps-classifier"


@dsl.pipeline(name=PIPELINE_NAME)
def training_pipeline(
    data_uri: str,
    store_uri: str,
    model_name: str = "digits",
    arch: str = TRAIN_DEFAULTS.arch,
    epochs: int = TRAIN_DEFAULTS.epochs,
    batch_size: int = TRAIN_DEFAULTS.batch_size,
    optimizer: str = TRAIN_DEFAULTS.optimizer,
    lr: float = TRAIN_DEFAULTS.lr,
    momentum: float = TRAIN_DEFAULTS.momentum,
    weight_decay: float = TRAIN_DEFAULTS.weight_decay,
    warmup_epochs: float = TRAIN_DEFAULTS.warmup_epochs,
    num_ps: int = TRAIN_DEFAULTS.num_ps,
    num_workers: int = TRAIN_DEFAULTS.num_workers,
    seed: int = TRAIN_DEFAULTS.seed,
    val_fraction: float = PREPARE_DEFAULTS.val_fraction,
    test_fraction: float = PREPARE_DEFAULTS.test_fraction,
    image_size: int = PREPARE_DEFAULTS.image_size,
    max_unreadable: int = PREPARE_DEFAULTS.max_unreadable,
    accuracy_threshold: float = 0.95,
    tolerance: float = 0.005,
    launcher: str = "local",
    train_timeout_s: int = 3600,
    train_backoff_limit: int = 3,
    train_mode: str = TRAIN_DEFAULTS.mode,
    train_augment: str = TRAIN_DEFAULTS.augment,
    train_checkpoint_every: int = TRAIN_DEFAULTS.checkpoint_every,
    train_max_staleness: int = TRAIN_DEFAULTS.max_staleness,
    train_bf16: bool = TRAIN_DEFAULTS.bf16,
    train_loader_workers: int = TRAIN_DEFAULTS.loader_workers,
    train_prefetch: int = TRAIN_DEFAULTS.prefetch,
    train_shuffle_window: int = TRAIN_DEFAULTS.shuffle_window,
    deploy_target: str = "local",
    serving_port: int = 8080,
    local_state_dir: str = "",
    kserve_namespace: str = "kubeflow-user-example-com",
    serving_gpus: int = 1,
    deployment_mode: str = "Knative",
    canary_percent: int = 10,
    serving_cpu: str = "",
    serving_memory: str = "",
    serving_scale_target: int = 0,
    serving_latency_budget_ms: float = 100.0,
    profile_seconds: float = 2.0,
    collect_uri: str = "",
    collect_fraction: float = 0.1,
    collect_images_fraction: float = 0.01,
    code_version: str = "",
):
    """Train an image classifier with parameter-server training, gate it, register it, and serve it.

    Args:
        data_uri: Raw images (MNIST IDX files or an ImageFolder tree): a local path or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX.
        store_uri: Where prepared data, runs and the model registry live: a local path or an Azure Blob URI.
        model_name: Registry name of the model, also the endpoint's model name.
        arch: Network: small_cnn, resnet18 or mobilenet_v3_small.
        epochs: Passes over the training split.
        batch_size: Images per worker per step.
        optimizer: sgd, adam or adamw.
        lr: Peak learning rate (linear warm-up, cosine decay).
        momentum: Momentum of sgd (Nesterov when above 0); adam and adamw ignore it.
        weight_decay: L2 penalty for sgd and adam, decoupled weight decay for adamw.
        warmup_epochs: Epochs of linear learning-rate warm-up.
        num_ps: Parameter-server shards.
        num_workers: Training workers.
        seed: Seed of the split, initialisation and data order.
        val_fraction: Fraction of each class for validation.
        test_fraction: Fraction of each class for the test split.
        image_size: 0 keeps the images' native size (they must share it); S resizes and center-crops every image to SxS.
        max_unreadable: 0 fails at the first unreadable raw file; N skips and lists up to N of them in the data report.
        accuracy_threshold: Minimum test accuracy to deploy.
        tolerance: Accepted accuracy loss against the production model.
        launcher: Where training ranks run: local (processes inside the training step; the default, for make run), trainjob (on the cluster: a Kubeflow Trainer v2 TrainJob with num_ps CPU parameter-server pods and num_workers GPU pods; num_ps 1, 2, 4 or 8; needs an Azure Blob store_uri and train_backoff_limit <= 5) or pytorchjob (legacy Training Operator v1 job; needs an Azure Blob store_uri and num_ps=1).
        train_timeout_s: Fail training after this many seconds.
        train_backoff_limit: Relaunches of a failed training job from its latest checkpoint before the step fails.
        train_mode: sync (workers' gradients averaged each step) or async (applied as they arrive, with bounded staleness).
        train_augment: Augmentation preset: auto (photos for colour images, digits otherwise), none, digits (small shifts) or photos (random resized crop and flip).
        train_checkpoint_every: Training steps between checkpoints (0: only at epoch ends).
        train_max_staleness: async mode: oldest gradient (in updates) a shard still applies; at least num_workers - 1.
        train_bf16: bfloat16 autocast in the workers' forward pass (meant for GPU workers).
        train_loader_workers: DataLoader processes per worker that decode and augment batches (0: inside the worker).
        train_prefetch: Batches each loader process prepares ahead.
        train_shuffle_window: Images shuffled together within a worker's part of an epoch.
        deploy_target: local (a KServe model server process on this machine) or kserve (an InferenceService on AKS GPU nodes).
        serving_port: HTTP port of the local model server.
        local_state_dir: Folder for the local server's pid and log.
        kserve_namespace: Namespace of the InferenceService (deploy_target kserve).
        serving_gpus: GPUs per predictor replica (deploy_target kserve).
        deployment_mode: KServe deployment mode: Knative (revisions: canary, then promotion) or Standard (a Deployment: rolling update); the old names Serverless and RawDeployment are accepted.
        canary_percent: Traffic share of a new revision while it is smoke-tested, before promotion to 100 (Knative mode; 0: no canary, the new revision takes all traffic once ready; Standard mode always rolls pods).
        serving_cpu: CPU request and limit per predictor replica, e.g. 2 or 500m (deploy_target kserve); empty: derived from the version's profile (the cores its measured throughput needed, at least 1).
        serving_memory: Memory request and limit per predictor replica, e.g. 1Gi (deploy_target kserve); empty: derived from the version's profile (its peak RSS x1.5).
        serving_scale_target: Autoscaling target per replica (deploy_target kserve): concurrent requests in Knative mode, CPU utilization % in Standard mode; 0: derived from the version's profile (the highest concurrency within its latency budget) or the default.
        serving_latency_budget_ms: p99 latency each served request must stay within: the push step's profile finds the highest concurrency per replica that holds it, and the faster runtime (torch or onnx) under it.
        profile_seconds: Seconds of load per concurrency level when the push step profiles each runtime in the real predictor; 0: no profile (default sizing, runtime chosen without measurements).
        collect_uri: Where the model server records statistics of the requests it answers, for the drift report: a store URI (a local folder, or on AKS an Azure Blob container the serving identity may write to); empty: no collection.
        collect_fraction: Fraction of requests recorded when collect_uri is set.
        collect_images_fraction: Fraction of requests whose preprocessed images are saved too (at most collect_fraction).
        code_version: Git commit of the code (filled in by the CLI), recorded in the model's lineage and shown in the evaluation report.
    """
    knobs = knobs_from_pipeline(locals())  # first statement: locals() is exactly the pipeline's parameters
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    prepared = prepare_data(data_uri=data_uri, store_uri=store_uri, val_fraction=val_fraction, image_size=image_size,
                            max_unreadable=max_unreadable,
                            test_fraction=test_fraction, seed=seed).set_display_name("prepare data")
    trained = train_model(dataset=prepared.outputs["dataset"], store_uri=store_uri, run_id=run_id, launcher=launcher,
                          timeout_s=train_timeout_s, backoff_limit=train_backoff_limit, **knobs)
    trained.set_display_name("train (parameter servers + workers)").set_cpu_limit("4").set_memory_limit("8G")
    evaluated = evaluate_model(dataset=prepared.outputs["dataset"], model=trained.outputs["model"], store_uri=store_uri,
                               model_name=model_name, accuracy_threshold=accuracy_threshold, tolerance=tolerance,
                               run_id=run_id, code_version=code_version)
    evaluated.set_display_name("evaluate and gate")
    # Every candidate is registered with its verdict; only an accepted one is deployed.
    pushed = push_model(model=trained.outputs["model"], dataset=prepared.outputs["dataset"],
                        evaluation=evaluated.outputs["evaluation"], store_uri=store_uri, model_name=model_name,
                        run_id=run_id, code_version=code_version, latency_budget_ms=serving_latency_budget_ms,
                        profile_seconds=profile_seconds)
    # The profile serves the version on one core while the load comes from the other.
    pushed.set_display_name("push to registry").set_caching_options(False).set_cpu_limit("2").set_memory_limit("4G")
    # The decision is the evaluate step's return value (`Output`): kfp 2.17.0's local runner resolves a
    # condition on a task's `Output` channel, but not on a NamedTuple field such as `decision`.
    with dsl.If(evaluated.outputs["Output"] == "accepted", name="candidate-accepted"):
        # The evaluation names the champion it judged against: deploy promotes only while it is still production.
        deployed = deploy_model(dataset=prepared.outputs["dataset"], evaluation=evaluated.outputs["evaluation"],
                                store_uri=store_uri, model_name=model_name,
                                version=pushed.outputs["version"], model_uri=pushed.outputs["model_uri"], run_id=run_id,
                                target=deploy_target, serving_port=serving_port, local_state_dir=local_state_dir,
                                kserve_namespace=kserve_namespace, serving_gpus=serving_gpus,
                                deployment_mode=deployment_mode, canary_percent=canary_percent, collect_uri=collect_uri,
                                collect_fraction=collect_fraction, collect_images_fraction=collect_images_fraction,
                                serving_cpu=serving_cpu, serving_memory=serving_memory, serving_scale_target=serving_scale_target)
        deployed.set_display_name("deploy").set_caching_options(False)
    for task in (prepared, trained, evaluated, pushed, deployed):
        # Workload identity: the pod gets a token for the service account's Azure identity (Blob access);
        # no key or connection string is ever a parameter. kfp.local ignores this setting.
        kubernetes.add_pod_label(task, WORKLOAD_IDENTITY_LABEL, "true")
        # The image this package was compiled for (in CI the digest just pushed): the TrainJob and the
        # InferenceService that the steps create run it too, not the default tag (components.cluster.project_image).
        task.set_env_variable("PIPELINE_IMAGE", project_image())
