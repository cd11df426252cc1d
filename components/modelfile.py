"""The model-version folder: the contract between training, the registry and the predictor.

A version is a folder holding

- ``model.safetensors``: the weights (never pickle);
- ``model.json``: a :class:`ModelCard` (architecture, input shape, normalization, class names);
- ``metrics.json``: evaluation results;
- ``MANIFEST.json``: the SHA-256 of every other file plus metadata, written last.

:func:`verify_manifest` is what the predictor runs before it reports ready.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from components.errors import ModelFormatError
from components.nets import build_model
from components.presets import FIT

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "MANIFEST.json"
FORMAT_VERSION = 2  # 2 added ``preprocess``; version-1 cards (no field) were made with the same transform
READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild the network and feed it: stored as ``model.json``."""

    arch: str
    in_channels: int
    height: int
    width: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    preprocess: str = FIT  # what a served image goes through (components.presets.fit_image)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> list[int]:
        return [self.in_channels, self.height, self.width]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            card = cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelFormatError(f"expected a model card with fields {list(cls.__dataclass_fields__)}: {exc}") from None
        if card.format_version not in READABLE_VERSIONS:
            raise ModelFormatError(f"expected model.json format_version in {READABLE_VERSIONS}, got {card.format_version}")
        if card.preprocess != FIT:
            raise ModelFormatError(f"expected model.json preprocess {FIT!r} (the transform this code applies), got {card.preprocess!r}")
        if len(card.mean) != card.in_channels or len(card.std) != card.in_channels:
            raise ModelFormatError(f"expected {card.in_channels} mean/std values, got {card.mean} / {card.std}")
        return card


def save_model(folder: Path, model: torch.nn.Module, card: ModelCard) -> None:
    """Write the weights and the card into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CARD_FILE).write_text(card.to_json())


def load_card(folder: Path) -> ModelCard:
    path = folder / CARD_FILE
    if not path.is_file():
        raise ModelFormatError(f"expected {CARD_FILE} in {folder}, found {sorted(p.name for p in folder.iterdir())}")
    return ModelCard.from_json(path.read_text())


def load_model(folder: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the network from ``model.json`` and load ``model.safetensors`` into it (eval mode)."""
    card = load_card(folder)
    model = build_model(card.arch, card.in_channels, card.num_classes)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (OSError, RuntimeError) as exc:
        raise ModelFormatError(f"weights in {folder / WEIGHTS_FILE} do not fit {card.arch}: {exc}") from None
    return model.to(device).eval(), card


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(folder: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The manifest for every file in ``folder`` (except a manifest), with ``metadata`` merged in."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    return {
        **metadata,
        "files": {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in files},
    }


def verify_manifest(folder: Path) -> dict[str, Any]:
    """Check every file listed in ``MANIFEST.json`` against its SHA-256; return the manifest."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ModelFormatError(f"{folder} has no {MANIFEST_FILE}: not a complete model version")
    manifest = json.loads(path.read_text())
    for name, entry in manifest.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise ModelFormatError(f"{name} is listed in {MANIFEST_FILE} but missing from {folder}")
        actual = sha256_file(file)
        if actual != entry["sha256"]:
            raise ModelFormatError(f"{name} in {folder} has SHA-256 {actual}, manifest says {entry['sha256']}")
    for required in (WEIGHTS_FILE, CARD_FILE):
        if required not in manifest.get("files", {}):
            raise ModelFormatError(f"{MANIFEST_FILE} in {folder} does not list {required}")
    return manifest
