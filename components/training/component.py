"""KFP component: train_model."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.kfp_base import project_component


# The knobs (arch … shuffle_window) carry TrainConfig's field names and have no defaults here: the pipeline sets
# every one from components.training.params, and KFP runs this body without that module, so a default could
# only be a second copy of TrainConfig's.
@project_component
def train_model(dataset: Input[Dataset], store_uri: str, run_id: str, launcher: str, timeout_s: int, backoff_limit: int,
                arch: str, epochs: int, batch_size: int, optimizer: str, lr: float, momentum: float, weight_decay: float,
                warmup_epochs: float, num_ps: int, num_workers: int, seed: int, mode: str, augment: str,
                checkpoint_every: int, max_staleness: int, bf16: bool, loader_workers: int, prefetch: int,
                shuffle_window: int, model: Output[Model], metrics: Output[Metrics], report: Output[HTML]):
    """Parameter-server training: num_ps server shards and num_workers workers (torch.distributed.rpc).

    Args:
        dataset: The prepared data set.
        store_uri: Store URI of data and run outputs.
        run_id: Pipeline run id; the model is written under runs/<run_id>/model in the store.
        launcher: Where the ranks run: local (processes in this step), trainjob (the cluster default: a Kubeflow
            Trainer v2 TrainJob on the project's ClusterTrainingRuntime, num_ps CPU parameter-server pods and
            num_workers pods with one GPU each; num_ps 1, 2, 4 or 8; backoff_limit <= 5) or pytorchjob (legacy
            Training Operator v1: one parameter server, num_ps=1). Both cluster launchers need an Azure Blob store_uri.
        timeout_s: Fail the step when training takes longer.
        backoff_limit: How many times a failed job is relaunched from its latest checkpoint before the step fails.
        arch: Network architecture (small_cnn, resnet18, mobilenet_v3_small).
        epochs: Passes over the training split.
        batch_size: Images per worker per step (the global batch is num_workers times this).
        optimizer: sgd, adam or adamw.
        lr: Peak learning rate (linear warm-up, cosine decay).
        momentum: Momentum of sgd (Nesterov when above 0); adam and adamw ignore it.
        weight_decay: L2 penalty for sgd and adam, decoupled weight decay for adamw.
        warmup_epochs: Epochs of linear learning-rate warm-up.
        num_ps: Parameter-server shards.
        num_workers: Workers computing gradients.
        seed: Seed of initialisation and data order.
        mode: sync (gradients of all workers averaged each step) or async (applied as they arrive, bounded staleness).
        augment: Augmentation preset: auto, none, digits or photos.
        checkpoint_every: Steps between checkpoints (0: only at epoch ends); a relaunch resumes from the latest.
        max_staleness: async mode: drop a gradient computed on parameters more than this many updates old (>= num_workers - 1).
        bf16: bfloat16 autocast in the workers' forward pass (meant for GPUs; on a CPU it also applies, usually slower).
        loader_workers: DataLoader processes per worker that decode and augment batches (0: inside the worker).
        prefetch: Batches each loader process prepares ahead.
        shuffle_window: Images shuffled together within a worker's part of an epoch.
        model: The trained model (its files live in the store).
        metrics: Per-epoch training and validation metrics.
        report: Loss and accuracy curves, per-epoch table and settings.
    """
    arguments = dict(locals())  # first statement: exactly the step's arguments, the knobs among them by field name
    from components.store import open_store
    from components.training.job import run_config, train
    from components.training.params import knobs_from_step
    from components.training.report import training_report

    config = run_config(store_uri, dataset.metadata["prefix"], run_id, **knobs_from_step(arguments))
    result = train(config, open_store(store_uri), launcher, timeout_s, backoff_limit, run_id)
    for epoch in result.history:
        for key in ("loss", "val_loss", "val_accuracy"):
            metrics.log_metric(f"epoch{epoch['epoch']:03d}_{key}", round(epoch[key], 6))
    metrics.log_metric("best_val_accuracy", result.best["val_accuracy"])
    model.metadata.update({"store_uri": store_uri, "prefix": result.model_prefix, "arch": arch, "best_epoch": result.best["epoch"]})
    with open(report.path, "w") as f:
        f.write(training_report(result.history, result.config))
    with open(model.path, "w") as f:
        f.write(f"{store_uri}/{result.model_prefix}\n")
