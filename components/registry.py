"""The model registry: immutable numbered versions and a production pointer, inside any store.

Layout under the store root::

    models/NAME/versions/N/CLAIM.json      claimed first, by a conditional create (N is taken)
    models/NAME/versions/N/<model files>   then the files
    models/NAME/versions/N/MANIFEST.json   last: a version without it does not exist for readers
    models/NAME/production.json            the pointer, changed only by compare-and-swap on its ETag
    models/NAME/history/<time>-<id>.json   one immutable record per pointer change (the audit trail)

Two pushes racing for the same number: one claim succeeds, the other moves on to N+1. Two promotions
racing: one compare-and-swap wins, the other raises :class:`ConflictError`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.errors import ConflictError, ModelFormatError, StoreError
from components.modelfile import MANIFEST_FILE, build_manifest, verify_manifest
from components.store import LocalStore, Store, join_key, open_store

CLAIM_FILE = "CLAIM.json"
POINTER_FILE = "production.json"
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def validate_model_name(name: str) -> str:
    # The name ends up in blob paths and Kubernetes object names: keep it DNS-label safe.
    if not NAME_PATTERN.match(name):
        raise ValueError(f"expected a model name of lowercase letters, digits and '-' (max 63), got {name!r}")
    return name


def version_key(name: str, version: int) -> str:
    """Where version ``version`` of model ``name`` lives, relative to the store root."""
    return join_key("models", name, "versions", str(version))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Pointer:
    version: int | None
    etag: str | None
    record: dict[str, Any]


class Registry:
    def __init__(self, store: Store, name: str):
        self.store = store
        self.name = validate_model_name(name)
        self.root = join_key("models", name)

    def version_prefix(self, version: int) -> str:
        return version_key(self.name, version)

    def version_uri(self, version: int) -> str:
        return f"{self.store.uri.rstrip('/')}/{self.version_prefix(version)}"

    # -- versions -----------------------------------------------------------------------------

    def push(self, folder: Path, metadata: dict[str, Any]) -> int:
        """Register the files in ``folder`` as the next version; return its number."""
        version = self._claim(metadata)
        prefix = self.version_prefix(version)
        manifest = build_manifest(folder, {**metadata, "model": self.name, "version": version, "created_at": now_iso()})
        for name in manifest["files"]:
            self.store.upload_file(join_key(prefix, name), folder / name)
        # Written last and only once: its presence is what makes the version exist.
        if not self.store.create_exclusive(join_key(prefix, MANIFEST_FILE), json.dumps(manifest, indent=2).encode()):
            raise ConflictError(f"{self.name} version {version} already has a manifest: refusing to overwrite it")
        return version

    def _claim(self, metadata: dict[str, Any]) -> int:
        version = self._highest_claimed() + 1
        claim = json.dumps({"claimed_at": now_iso(), "run_id": metadata.get("lineage", {}).get("run_id")}).encode()
        while not self.store.create_exclusive(join_key(self.version_prefix(version), CLAIM_FILE), claim):
            version += 1
        return version

    def _highest_claimed(self) -> int:
        numbers = [int(m.group(1)) for k in self.store.list(join_key(self.root, "versions")) if (m := _VERSION_KEY.search(k))]
        return max(numbers, default=0)

    def versions(self) -> list[int]:
        """Complete versions (those with a manifest), ascending."""
        keys = self.store.list(join_key(self.root, "versions"))
        return sorted(int(m.group(1)) for k in keys if (m := _VERSION_KEY.search(k)) and k.endswith("/" + MANIFEST_FILE))

    def manifest(self, version: int) -> dict[str, Any]:
        key = join_key(self.version_prefix(version), MANIFEST_FILE)
        try:
            return json.loads(self.store.read_bytes(key))
        except StoreError:
            raise ModelFormatError(f"{self.name} has no complete version {version} (no {MANIFEST_FILE}); versions: {self.versions()}") from None

    def download(self, version: int, dest: Path) -> dict[str, Any]:
        """Download a version into ``dest`` and verify every file's SHA-256; return its manifest."""
        manifest = self.manifest(version)
        dest.mkdir(parents=True, exist_ok=True)
        for name in [*manifest["files"], MANIFEST_FILE]:
            self.store.download_file(join_key(self.version_prefix(version), name), dest / name)
        verify_manifest(dest)
        return manifest

    # -- production pointer ---------------------------------------------------------------------

    def production(self) -> Pointer:
        found = self.store.read_with_etag(join_key(self.root, POINTER_FILE))
        if found is None:
            return Pointer(None, None, {})
        record = json.loads(found[0])
        return Pointer(record["version"], found[1], record)

    def promote(self, version: int, actor: str, expected: Pointer | None = None, reason: str = "") -> Pointer:
        """Point production at ``version``; lose with :class:`ConflictError` if the pointer moved since ``expected``."""
        self.manifest(version)  # only complete versions can be promoted
        current = expected if expected is not None else self.production()
        record = {"version": version, "previous": current.version, "by": actor, "reason": reason, "at": now_iso()}
        etag = self.store.write_if_match(join_key(self.root, POINTER_FILE), json.dumps(record, indent=2).encode(), current.etag)
        self._append_history(record)
        return Pointer(version, etag, record)

    def history(self) -> list[dict[str, Any]]:
        keys = self.store.list(join_key(self.root, "history"))
        return [json.loads(self.store.read_bytes(k)) for k in keys]

    def _append_history(self, record: dict[str, Any]) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.store.create_exclusive(join_key(self.root, "history", f"{stamp}-{uuid.uuid4().hex[:8]}.json"), json.dumps(record).encode())


_VERSION_KEY = re.compile(r"/versions/(\d+)/")


def materialize(uri: str, scratch: Path) -> Path:
    """A local folder holding the model version at ``uri``: the folder itself when it is local,
    otherwise a download into ``scratch``. Every URI is a store root, so a version URI needs no parsing."""
    store = open_store(uri)
    if isinstance(store, LocalStore):
        if not store.root.is_dir():
            raise StoreError(f"expected a model version folder at {uri}, found nothing there")
        return store.root
    if not store.download_prefix("", scratch):
        raise StoreError(f"expected model files under {uri}, found none")
    return scratch
