"""The bundled sample: scikit-learn's handwritten digits, written out as MNIST IDX files.

scikit-learn ships 1,797 digits as 8×8 images with values 0–16, so nothing is downloaded. Each is
scaled to 0–255 and resized to 20×20 centred in a 28×28 frame, the way MNIST was made, then the
whole set is written as ``train-*`` (first 1,500) and ``t10k-*`` (the rest) IDX files. The
pipeline reads them with the same loader that reads real MNIST.

    python -m components.data.sample --output .work/data/digits
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from components.data.idx import write_idx_gz
from components.store import open_store

TRAIN_COUNT = 1500


def digits_as_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``uint8 [N,28,28]`` images and ``uint8 [N]`` labels."""
    from sklearn.datasets import load_digits  # the data set ships inside the package

    digits = load_digits()
    images = np.stack([_to_mnist_frame(img) for img in digits.images])
    return images, digits.target.astype(np.uint8)


def _to_mnist_frame(image8: np.ndarray) -> np.ndarray:
    scaled = Image.fromarray((image8 * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
    frame = np.zeros((28, 28), dtype=np.uint8)
    frame[4:24, 4:24] = np.asarray(scaled.resize((20, 20), Image.Resampling.BILINEAR))
    return frame


def write_sample(uri: str) -> str:
    """Write the sample's IDX files into the store at ``uri`` (idempotent); return ``uri``."""
    store = open_store(uri)
    images, labels = digits_as_mnist()
    files = {
        "train-images-idx3-ubyte.gz": images[:TRAIN_COUNT],
        "train-labels-idx1-ubyte.gz": labels[:TRAIN_COUNT],
        "t10k-images-idx3-ubyte.gz": images[TRAIN_COUNT:],
        "t10k-labels-idx1-ubyte.gz": labels[TRAIN_COUNT:],
    }
    for name, array in files.items():
        data = write_idx_gz(array)
        existing = store.read_with_etag(name)
        if existing is None or existing[0] != data:
            store.write_bytes(name, data)
    return uri


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder (store URI) to write the IDX files to")
    args = parser.parse_args(argv)
    print(write_sample(str(args.output)))


if __name__ == "__main__":
    main()
