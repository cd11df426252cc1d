"""KFP component: train_model."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.kfp_base import project_component


@project_component
def train_model(dataset: Input[Dataset], store_uri: str, run_id: str, arch: str, epochs: int, batch_size: int,
                optimizer: str, lr: float, num_ps: int, num_workers: int, seed: int, launcher: str, timeout_s: int,
                model: Output[Model], metrics: Output[Metrics], report: Output[HTML], mode: str = "sync", backoff_limit: int = 3,
                checkpoint_every: int = 100, max_staleness: int = 8, bf16: bool = False):
    """Parameter-server training: num_ps server shards and num_workers workers (torch.distributed.rpc).

    Args:
        dataset: The prepared data set.
        store_uri: Store URI of data and run outputs.
        run_id: Pipeline run id; the model is written under runs/<run_id>/model in the store.
        arch: Network architecture (small_cnn, resnet18, mobilenet_v3_small).
        epochs: Passes over the training split.
        batch_size: Images per worker per step (the global batch is num_workers times this).
        optimizer: sgd, adam or adamw.
        lr: Peak learning rate (linear warm-up, cosine decay).
        num_ps: Parameter-server shards.
        num_workers: Workers computing gradients.
        seed: Seed of initialisation and data order.
        launcher: Where the ranks run: local (processes in this step) or pytorchjob (a Kubeflow Training
            Operator job: the parameter server on a CPU node, one GPU per worker; needs an Azure Blob store_uri and num_ps=1).
        timeout_s: Fail the step when training takes longer.
        model: The trained model (its files live in the store).
        metrics: Per-epoch training and validation metrics.
        report: Loss and accuracy curves, per-epoch table and settings.
        mode: sync (gradients of all workers averaged each step) or async (applied as they arrive, bounded staleness).
        backoff_limit: How many times a failed job is relaunched from its latest checkpoint before the step fails.
        checkpoint_every: Steps between checkpoints (0: only at epoch ends); a relaunch resumes from the latest.
        max_staleness: async mode: drop a gradient computed on parameters more than this many updates old (>= num_workers - 1).
        bf16: bfloat16 autocast in the workers' forward pass (meant for GPUs; on a CPU it also applies, usually slower).
    """
    from components.training.job import run_config, train
    from components.training.report import training_report

    config = run_config(store_uri, dataset.metadata["prefix"], run_id, arch=arch, epochs=epochs, batch_size=batch_size,
                        optimizer=optimizer, lr=lr, num_ps=num_ps, num_workers=num_workers, seed=seed, mode=mode,
                        checkpoint_every=checkpoint_every, max_staleness=max_staleness, bf16=bf16)
    result = train(config, launcher, timeout_s, backoff_limit, run_id)
    for epoch in result.history:
        for key in ("loss", "val_loss", "val_accuracy"):
            metrics.log_metric(f"epoch{epoch['epoch']:03d}_{key}", round(epoch[key], 6))
    metrics.log_metric("best_val_accuracy", result.best["val_accuracy"])
    model.metadata.update({"store_uri": store_uri, "prefix": result.model_prefix, "arch": arch, "best_epoch": result.best["epoch"]})
    with open(report.path, "w") as f:
        f.write(training_report(result.history, result.config))
    with open(model.path, "w") as f:
        f.write(f"{store_uri}/{result.model_prefix}\n")
