"""Shared fixtures: the bundled sample, a prepared data set, a model version, and (from
:mod:`tests.azurite`) the storage fixtures that run every store test against both backends.

Everything is real and local: files in ``tmp_path`` folders, processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from components.data.prepare import DatasetInfo, SplitConfig, prepare
from components.data.sample import write_sample
from components.modelfile import MANIFEST_FILE, METRICS_FILE, ModelCard, build_manifest, save_model
from components.nets import build_model
from tests.azurite import azurite, store_uri  # noqa: F401  (the storage fixtures; pytest finds fixtures by name)


@pytest.fixture(scope="session")
def sample_uri(tmp_path_factory) -> str:
    return write_sample(str(tmp_path_factory.mktemp("raw") / "digits"))


@pytest.fixture(scope="session")
def prepared(sample_uri, tmp_path_factory) -> DatasetInfo:
    return prepare(sample_uri, str(tmp_path_factory.mktemp("store")), SplitConfig(seed=0))


def make_version_folder(folder: Path, seed: int = 0, card: ModelCard | None = None) -> Path:
    """A complete model-version folder (weights, card, metrics, manifest) with seeded random weights."""
    card = card or ModelCard("small_cnn", 1, 28, 28, [str(d) for d in range(10)], [0.15], [0.28])
    torch.manual_seed(seed)
    save_model(folder, build_model(card.arch, card.in_channels, card.num_classes), card)
    (folder / METRICS_FILE).write_text(json.dumps({"accuracy": 0.5}))
    (folder / MANIFEST_FILE).write_text(json.dumps(build_manifest(folder, {"version": 1})))
    return folder


@pytest.fixture
def version_folder(tmp_path) -> Path:
    return make_version_folder(tmp_path / "version")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
