"""Component tests: the KFP wrappers called through ``python_func`` with artifacts in tmp_path."""

from __future__ import annotations

import json

from kfp import dsl

from components.data.component import prepare_data


def test_prepare_data_component_writes_metadata_the_index_and_the_data_report(sample_uri, tmp_path):
    dataset = dsl.Dataset(uri=str(tmp_path / "dataset.json"))
    report = dsl.Markdown(uri=str(tmp_path / "report.md"))
    prepare_data.python_func(data_uri=sample_uri, store_uri=str(tmp_path / "store"), val_fraction=0.1,
                             test_fraction=0.1, seed=0, image_size=0, max_unreadable=0, dataset=dataset, report=report)
    assert dataset.metadata["counts"] == {"train": 1439, "val": 179, "test": 179}
    assert len(dataset.metadata["content_hash"]) == 64 and dataset.metadata["image_shape"] == [1, 28, 28]
    described = json.loads((tmp_path / "dataset.json").read_text())
    assert described["class_histogram"]["test"]["0"] == 18
    assert (tmp_path / "store" / described["prefix"] / "dataset.json").is_file()
    assert "| 0 | 142 | 18 | 18 |" in (tmp_path / "report.md").read_text()


# Every knob at a value other than its default, so a knob the step drops or misroutes shows.
KNOB_VALUES = {"arch": "resnet18", "epochs": 3, "batch_size": 8, "optimizer": "sgd", "lr": 0.1, "momentum": 0.5,
               "weight_decay": 0.01, "warmup_epochs": 0.5, "num_ps": 2, "num_workers": 3, "seed": 7, "mode": "async",
               "augment": "none", "checkpoint_every": 5, "max_staleness": 4, "bf16": True, "loader_workers": 1,
               "prefetch": 3, "shuffle_window": 64}


def test_train_model_component_hands_every_knob_to_the_training_config(tmp_path, monkeypatch):
    from components.store import Store
    from components.training import job
    from components.training.component import train_model
    from components.training.params import PIPELINE_KNOBS, TRAIN_DEFAULTS

    assert set(KNOB_VALUES) == set(PIPELINE_KNOBS.values())
    assert all(value != getattr(TRAIN_DEFAULTS, field) for field, value in KNOB_VALUES.items())
    calls = []

    def fake_train(config, store, launcher, timeout_s, backoff_limit, run_id):  # the launcher is the outer boundary
        calls.append((config, store, launcher, timeout_s, backoff_limit, run_id))
        epoch = {"epoch": 1, "loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.4, "val_accuracy": 0.9, "comm_fraction": 0.1, "seconds": 2.0}
        return job.TrainResult(config.output_prefix, [epoch], {"epochs": config.epochs})

    monkeypatch.setattr(job, "train", fake_train)
    dataset = dsl.Dataset(uri=str(tmp_path / "dataset"), metadata={"prefix": "prepared/abc"})
    model, metrics, report = (dsl.Model(uri=str(tmp_path / "model")), dsl.Metrics(uri=str(tmp_path / "metrics")),
                              dsl.HTML(uri=str(tmp_path / "report.html")))
    train_model.python_func(dataset=dataset, store_uri=str(tmp_path / "store"), run_id="r1", launcher="local", timeout_s=60,
                            backoff_limit=2, model=model, metrics=metrics, report=report, **KNOB_VALUES)
    [(config, store, launcher, timeout_s, backoff_limit, run_id)] = calls
    assert {field: getattr(config, field) for field in KNOB_VALUES} == KNOB_VALUES
    assert (config.dataset_prefix, config.output_prefix) == ("prepared/abc", "runs/r1/model")
    assert isinstance(store, Store) and (launcher, timeout_s, backoff_limit, run_id) == ("local", 60, 2, "r1")
    assert model.metadata["prefix"] == "runs/r1/model" and metrics.metadata["best_val_accuracy"] == 0.9


def test_push_model_component_opens_the_store_once_and_registers_the_run_model(tmp_path, monkeypatch):
    import components.store
    from components.push.component import push_model
    from components.registry import Registry

    store_uri = str(tmp_path / "store")
    model_files = tmp_path / "store" / "runs" / "r1" / "model"
    model_files.mkdir(parents=True)
    for name in ("model.safetensors", "model.json", "history.json"):
        (model_files / name).write_text(name)
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"accuracy": 0.97, "verdict": {"decision": "accepted", "reason": "first model"}}))
    opened = []
    real_open = components.store.open_store
    monkeypatch.setattr(components.store, "open_store", lambda uri: opened.append(uri) or real_open(uri))

    version, model_uri = push_model.python_func(
        model=dsl.Model(uri=str(tmp_path / "model"), metadata={"prefix": "runs/r1/model"}),
        dataset=dsl.Dataset(uri=str(tmp_path / "dataset"), metadata={"prefix": "prepared/abc", "content_hash": "f" * 64}),
        evaluation=dsl.Artifact(uri=str(evaluation)), store_uri=store_uri, model_name="digits", run_id="r1", code_version="c0ffee",
        profile_seconds=0)  # placeholder files cannot be served: no profile (tests/test_profile.py profiles real models)
    assert opened == [store_uri]
    manifest = Registry(real_open(store_uri), "digits").manifest(version)
    assert version == 1 and model_uri.endswith("models/digits/versions/1")
    assert set(manifest["files"]) == {"model.safetensors", "model.json", "metrics.json"}  # training history stays with the run
    assert manifest["lineage"]["dataset_hash"] == "f" * 64 and manifest["verdict"]["decision"] == "accepted"
