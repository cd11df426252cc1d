"""``data put``: a raw data set goes into a store (local folder and Azurite) only whole and valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.data.sample import write_sample
from components.data.upload import put_folder
from components.errors import DataError
from components.store import open_store
from pipelines.cli import main
from tests.helpers import prepare_at


@pytest.fixture
def sample_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "digits"
    write_sample(str(folder))
    return folder


def test_a_put_data_set_prepares_exactly_like_the_folder_it_came_from(store_uri: str, sample_folder: Path, tmp_path: Path):
    data_uri = f"{store_uri.rstrip('/')}/data/digits"
    result = put_folder(sample_folder, data_uri)

    assert (result.files, result.source_format, result.examples, result.image_shape, result.classes) == (4, "mnist-idx", 1797, (1, 28, 28), 10)
    assert sorted(open_store(data_uri).list()) == sorted(p.name for p in sample_folder.iterdir())
    from_store = prepare_at(data_uri, str(tmp_path / "a"))
    from_folder = prepare_at(str(sample_folder), str(tmp_path / "b"))
    assert from_store.content_hash == from_folder.content_hash


def shapes_folder(source: Path) -> Path:
    """Two classes of three 8x8 grayscale PNGs."""
    for label in ("circle", "square"):
        (source / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8), "L").save(source / label / f"{i}.png")
    return source


def test_an_image_folder_keeps_its_class_folders_and_leaves_hidden_files_behind(store_uri: str, tmp_path: Path):
    source = shapes_folder(tmp_path / "shapes")
    (source / ".DS_Store").write_bytes(b"finder")

    result = put_folder(source, store_uri)

    assert (result.files, result.examples, result.classes) == (6, 6, 2)
    assert open_store(store_uri).list() == [f"{label}/{i}.png" for label in ("circle", "square") for i in range(3)]


def test_a_bad_data_set_is_refused_before_anything_is_uploaded(store_uri: str, sample_folder: Path):
    labels = sample_folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])  # truncated

    with pytest.raises(DataError, match="t10k-labels"):
        put_folder(sample_folder, store_uri)
    assert open_store(store_uri).list() == []


def test_a_destination_holding_another_data_set_is_refused_and_left_as_it_was(store_uri: str, sample_folder: Path):
    store = open_store(store_uri)
    store.ensure_root()
    store.write_bytes("other/0.png", b"someone else's data")

    with pytest.raises(DataError, match=r"to be empty or to hold this same data set, found other files: other/0\.png"):
        put_folder(sample_folder, store_uri)
    assert store.list() == ["other/0.png"]


def test_putting_the_same_folder_again_finishes_an_interrupted_put(store_uri: str, sample_folder: Path):
    store = open_store(store_uri)
    store.ensure_root()
    first = sorted(sample_folder.iterdir())[0]
    store.upload_file(first.name, first)  # what an interrupted put leaves: part of the same data set

    result = put_folder(sample_folder, store_uri)

    assert result.files == 4 and len(store.list()) == 4


def test_the_cli_puts_the_sample_and_says_how_to_train_on_it(store_uri: str, capsys: pytest.CaptureFixture[str]):
    main(["data", "put", "--sample", "--to", store_uri])

    out = capsys.readouterr().out
    assert "put 4 files" in out and "1797 images 1x28x28, 10 classes" in out
    assert f"--data-uri {store_uri}" in out
    assert len(open_store(store_uri).list()) == 4


def test_the_cli_says_what_it_expected_when_the_folder_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "put", str(tmp_path / "nosuch"), "--to", str(tmp_path / "store")])

    assert "expected a folder holding MNIST IDX files or an ImageFolder tree, found nothing at" in str(exit_info.value)
    assert not (tmp_path / "store").exists()


def test_a_symlink_is_refused_and_nothing_is_uploaded(store_uri: str, tmp_path: Path):
    source = shapes_folder(tmp_path / "shapes")
    secret = tmp_path / "secret.png"
    secret.write_bytes((source / "circle" / "0.png").read_bytes())
    (source / "circle" / "3.png").symlink_to(secret)

    with pytest.raises(DataError, match=r"circle/3.png: expected regular files only, found a symlink to .*secret.png"):
        put_folder(source, store_uri)
    assert open_store(store_uri).list() == []


def test_a_mixed_size_photo_folder_is_put_and_an_image_bomb_is_refused_first(store_uri: str, tmp_path: Path):
    source = tmp_path / "photos"
    for label, size in (("wide", (40, 20)), ("tall", (20, 40))):
        (source / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", size, (40 * i, 0, 0)).save(source / label / f"{i}.jpg")
    assert put_folder(source, store_uri).describe().endswith("6 images of mixed sizes (prepare with image_size=S), 2 classes")

    Image.new("1", (12000, 12000)).save(source / "wide" / "bomb.png")
    with pytest.raises(DataError, match=r"wide/bomb.png: expected at most 50,000,000 pixels"):
        put_folder(source, f"{store_uri.rstrip('/')}/other")
    assert open_store(f"{store_uri.rstrip('/')}/other").list() == []
