"""Component tests: the KFP wrappers called through ``python_func`` with artifacts in tmp_path."""

from __future__ import annotations

import json

from kfp import dsl

from components.data.component import prepare_data


def test_prepare_data_component_writes_metadata_and_description(sample_uri, tmp_path):
    dataset = dsl.Dataset(uri=str(tmp_path / "dataset.json"))
    prepare_data.python_func(data_uri=sample_uri, store_uri=str(tmp_path / "store"), val_fraction=0.1,
                             test_fraction=0.1, seed=0, dataset=dataset)
    assert dataset.metadata["counts"] == {"train": 1439, "val": 179, "test": 179}
    assert len(dataset.metadata["content_hash"]) == 64
    assert json.loads(dataset.metadata["class_histogram"])["test"]["0"] == 18
    described = json.loads((tmp_path / "dataset.json").read_text())
    assert (tmp_path / "store" / described["prefix"] / "dataset.json").is_file()
