"""KFP component: prepare_data."""

from kfp.dsl import Dataset, Output

from components.kfp_base import project_component


@project_component
def prepare_data(data_uri: str, store_uri: str, val_fraction: float, test_fraction: float, seed: int, dataset: Output[Dataset]):
    """Validate the raw images at data_uri, split them (seeded, stratified) and write them to the store.

    Args:
        data_uri: Store URI of the raw data: MNIST IDX files or an ImageFolder tree.
        store_uri: Store URI where the prepared data set is written.
        val_fraction: Fraction of each class held out for validation.
        test_fraction: Fraction of each class held out for the final test.
        seed: Seed of the split.
        dataset: The prepared data set's description (its data lives in the store).
    """
    import dataclasses
    import json

    from components.data.prepare import SplitConfig, prepare

    info = prepare(data_uri, store_uri, SplitConfig(val_fraction, test_fraction, seed))
    with open(dataset.path, "w") as f:
        f.write(info.to_json())
    dataset.metadata.update({k: v for k, v in dataclasses.asdict(info).items() if k != "class_histogram"})
    dataset.metadata["class_histogram"] = json.dumps(info.class_histogram)
