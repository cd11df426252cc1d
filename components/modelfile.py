"""The model-version folder: the contract between training, the registry and the predictor.

A version is a folder holding

- ``model.safetensors``: the weights (never pickle);
- ``model.json``: a :class:`ModelCard` (architecture, input shape, normalization, class names);
- ``metrics.json``: evaluation results;
- ``model.onnx``: the network for onnxruntime, only when the export passed its parity check;
- ``MANIFEST.json``: the SHA-256 of every other file plus metadata, written last.

:func:`verify_manifest` is what the predictor runs before it reports ready.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.archs import ARCHITECTURES
from components.errors import ModelFormatError
from components.presets import FIT

if TYPE_CHECKING:  # the weights' two functions import torch when called: manifests and cards need no torch
    import torch

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
METRICS_FILE = "metrics.json"
ONNX_FILE = "model.onnx"  # only in a version whose export passed its parity check (components.export)
MANIFEST_FILE = "MANIFEST.json"
FORMAT_VERSION = 2  # 2 added ``preprocess``; version-1 cards (no field) were made with the same transform
READABLE_VERSIONS = (1, 2)
# Bounds on what a card may claim, checked before anything is allocated for it: the largest images data
# preparation makes (image_size 4096), grayscale to RGBA, and far more classes than any folder tree holds.
MAX_SIDE = 4096
MAX_CHANNELS = 4
MAX_CLASSES = 100_000
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFormatError(f"expected {CARD_FILE} to be JSON, got {exc}") from None
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            raise ModelFormatError(f"expected {CARD_FILE} to be an object with fields {list(cls.__dataclass_fields__)}, "
                                   f"got {sorted(data) if isinstance(data, dict) else type(data).__name__}")
        check_card_fields(data)
        try:
            card = cls(**data)
        except TypeError as exc:
            raise ModelFormatError(f"expected a model card with fields {list(cls.__dataclass_fields__)}: {exc}") from None
        if card.format_version not in READABLE_VERSIONS:
            raise ModelFormatError(f"expected model.json format_version in {READABLE_VERSIONS}, got {card.format_version}")
        if card.preprocess != FIT:
            raise ModelFormatError(f"expected model.json preprocess {FIT!r} (the transform this code applies), got {card.preprocess!r}")
        if len(card.mean) != card.in_channels or len(card.std) != card.in_channels:
            raise ModelFormatError(f"expected {card.in_channels} mean/std values, got {card.mean} / {card.std}")
        return card


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def check_card_fields(data: dict[str, Any]) -> None:
    """Refuse a card whose fields have the wrong type or claim an input no model here has, before the
    network or a test tensor is built from it (a card claiming 100000x100000 pixels would allocate ~149 GiB)."""
    checks = [
        ("arch", data.get("arch") in ARCHITECTURES, f"one of {ARCHITECTURES}"),
        ("in_channels", _is_int(data.get("in_channels")) and 1 <= data["in_channels"] <= MAX_CHANNELS, f"an integer 1 to {MAX_CHANNELS}"),
        ("height", _is_int(data.get("height")) and 1 <= data["height"] <= MAX_SIDE, f"an integer 1 to {MAX_SIDE}"),
        ("width", _is_int(data.get("width")) and 1 <= data["width"] <= MAX_SIDE, f"an integer 1 to {MAX_SIDE}"),
        ("class_names", isinstance(data.get("class_names"), list) and 1 <= len(data["class_names"]) <= MAX_CLASSES
         and all(isinstance(n, str) for n in data["class_names"]), f"a list of 1 to {MAX_CLASSES} strings"),
        ("mean", isinstance(data.get("mean"), list) and all(_is_number(v) for v in data["mean"]), "a list of numbers"),
        ("std", isinstance(data.get("std"), list) and all(_is_number(v) and v > 0 for v in data["std"]), "a list of positive numbers"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ModelFormatError(f"expected model.json {name} to be {expected}, got {_short(data.get(name))}")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def save_model(folder: Path, model: torch.nn.Module, card: ModelCard) -> None:
    """Write the weights and the card into ``folder``."""
    from safetensors.torch import save_file

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
    from safetensors.torch import load_file

    from components.nets import build_model

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


def manifest_digest(data: bytes) -> str:
    """The SHA-256 of a manifest's exact bytes: what the production pointer records and a pinned URI carries."""
    return hashlib.sha256(data).hexdigest()


def parse_manifest(data: bytes, source: str) -> dict[str, Any]:
    """Parse manifest bytes and check their shape: an object whose ``files`` maps plain file names to
    ``{"sha256": 64 hex digits, "size": bytes}``. ``source`` names the manifest in the one-line refusal."""
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"expected {source} to be JSON, got {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        found = type(manifest.get("files")).__name__ if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelFormatError(f"expected {source} to be an object with a files mapping, got {found}")
    for name, entry in manifest["files"].items():
        if "/" in name or "\\" in name or name in ("", ".", "..", MANIFEST_FILE):
            raise ModelFormatError(f"expected plain file names in {source}, found {name!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not SHA256_HEX.fullmatch(entry["sha256"]):
            raise ModelFormatError(f"expected {source} files.{name} to hold a sha256 of 64 hex digits, got {_short(entry)}")
    for required in (WEIGHTS_FILE, CARD_FILE):
        if required not in manifest["files"]:
            raise ModelFormatError(f"{source} does not list {required}")
    return manifest


def verify_manifest(folder: Path, manifest_sha256: str | None = None, *, where: str | None = None) -> dict[str, Any]:
    """Check every file listed in ``MANIFEST.json`` against its SHA-256; return the manifest.

    With ``manifest_sha256`` the manifest's own bytes must hash to it too: the manifest is otherwise
    self-asserted, and a writer who changes a file and its hash together would pass the file checks.
    ``where`` names the version in refusals when ``folder`` is only a scratch copy of it."""
    where = where or str(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ModelFormatError(f"{where} has no {MANIFEST_FILE}: not a complete model version")
    data = path.read_bytes()
    if manifest_sha256 is not None and (actual := manifest_digest(data)) != manifest_sha256:
        raise ModelFormatError(f"{MANIFEST_FILE} in {where} has SHA-256 {actual}, expected {manifest_sha256} (the promoted manifest)")
    manifest = parse_manifest(data, f"{MANIFEST_FILE} in {where}")
    for name, entry in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise ModelFormatError(f"{name} is listed in {MANIFEST_FILE} but missing from {where}")
        actual = sha256_file(file)
        if actual != entry["sha256"]:
            raise ModelFormatError(f"{name} in {where} has SHA-256 {actual}, manifest says {entry['sha256']}")
    return manifest
