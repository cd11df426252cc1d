"""KFP component: prepare_data."""

from kfp.dsl import Dataset, Markdown, Output

from components.kfp_base import project_component


@project_component
def prepare_data(data_uri: str, store_uri: str, val_fraction: float, test_fraction: float, seed: int,
                 image_size: int, max_unreadable: int,
                 dataset: Output[Dataset], report: Output[Markdown]):
    """Validate the raw images at data_uri, split them (seeded, stratified) and write them to the store as shards.

    Defaults live in the pipeline's signature (from PrepareConfig); the step takes every setting explicitly.

    Args:
        data_uri: Store URI of the raw data: MNIST IDX files or an ImageFolder tree.
        store_uri: Store URI where the prepared data set is written.
        val_fraction: Fraction of each class held out for validation.
        test_fraction: Fraction of each class held out for the final test.
        seed: Seed of the split.
        dataset: The prepared data set's description (its data lives in the store).
        report: Counts, class and image-size histograms, unreadable files, duplicates across splits.
        image_size: 0 keeps the native size (the images must share it); S resizes and center-crops every image to SxS.
        max_unreadable: 0 fails the step at the first unreadable file; N skips and lists up to N of them.
    """
    from components.data.prepare import PrepareConfig, prepare
    from components.data.report import data_report
    from components.store import open_store

    config = PrepareConfig(val_fraction, test_fraction, seed, image_size=image_size, max_unreadable=max_unreadable)
    info = prepare(open_store(data_uri), open_store(store_uri), config)
    with open(dataset.path, "w") as f:
        f.write(info.to_json())
    with open(report.path, "w") as f:
        f.write(data_report(info))
    dataset.metadata.update(info.summary())
