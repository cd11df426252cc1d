"""Raw and prepared data move through either store backend unchanged (the data half of the store's users)."""

from __future__ import annotations

import numpy as np

from components.data.prepare import SplitConfig, load_prepared, prepare
from components.data.sample import digits_as_mnist, write_sample
from components.store import open_store


def test_sample_data_is_written_prepared_and_read_back_through_the_store(store_uri: str) -> None:
    raw_uri = write_sample(store_uri.rstrip("/") + "/raw/digits")
    assert sorted(open_store(raw_uri).list()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
    ]
    info = prepare(raw_uri, store_uri, SplitConfig(seed=3))
    data = load_prepared(store_uri, info.prefix)
    images, labels = digits_as_mnist()
    assert sum(info.counts.values()) == len(labels)
    assert sorted(np.concatenate([data.labels[s] for s in ("train", "val", "test")]).tolist()) == sorted(labels.tolist())
    assert data.images["train"].shape[1:] == (1, 28, 28) and data.images["train"].dtype == np.uint8
