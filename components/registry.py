"""The model registry: immutable numbered versions and a production pointer, inside any store.

Layout under the store root::

    models/NAME/versions/N/CLAIM.json      claimed first, by a conditional create (N is taken)
    models/NAME/versions/N/<model files>   then the files
    models/NAME/versions/N/MANIFEST.json   last: a version without it does not exist for readers
    models/NAME/production.json            the pointer, changed only by compare-and-swap on its ETag
    models/NAME/history/<time>-<id>.json   one immutable record per pointer change (the audit trail)

Two pushes racing for the same number: one claim succeeds, the other moves on to N+1. Two promotions
racing: one compare-and-swap wins, the other raises :class:`ConflictError`. A push that dies before its
manifest leaves its claim and some files: :meth:`Registry.abandoned` finds them once they are old enough,
:meth:`Registry.clear_abandoned` deletes the files and keeps the claim, so the number is never reused.

A pointer record names the change (``change_id``), its action (``promote`` or ``rollback``), the version
before and after, who made it, why and when. It is written to the pointer first (the compare-and-swap) and
then to the history under ``history/<change_id>.json``; a change whose history record is missing (the
writer died in between) is still reported by :meth:`Registry.history` and recorded by the next change.

The gate's verdict travels in each manifest: the pointer never moves to a version the gate rejected unless
the mover forces it and gives a reason; the record then says ``forced: true``, with the reason.

Integrity: ``MANIFEST.json`` lists every file's SHA-256, but it is self-asserted (a writer can change a file
and its hash together). So a promotion first verifies every file, then records the SHA-256 of the manifest's
own bytes (``manifest_sha256``) in the pointer and its history; a deployment serves the version by a URI
pinned to that digest (:func:`pinned_uri`), which :func:`materialize` refuses when the manifest differs.
Whoever can write the store can still forge a version before it is promoted: writers are trusted.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from components.errors import ConflictError, ModelFormatError, NotFoundError, RegistryError, StoreError
from components.evaluation import REJECTED
from components.modelfile import (
    MANIFEST_FILE,
    SHA256_HEX,
    WEIGHTS_FILE,
    build_manifest,
    manifest_digest,
    parse_manifest,
    sha256_file,
    verify_manifest,
)
from components.store import LocalStore, Store, join_key, open_store

MODELS_ROOT = "models"
CLAIM_FILE = "CLAIM.json"
POINTER_FILE = "production.json"
NAME_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
PIN_MARK = "#manifest-sha256="  # a version URI pinned to one manifest: URI#manifest-sha256=<64 hex digits>


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise ``ValueError``."""
    # The name ends up in blob paths and Kubernetes object names: keep it DNS-label safe.
    # fullmatch, not match with "$": "$" also matches before a trailing newline ("digits\n" would pass).
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"expected a model name of lowercase letters, digits and '-' (max 63), got {name!r}")
    return name


def version_key(name: str, version: int) -> str:
    """Where version ``version`` of model ``name`` lives, relative to the store root."""
    return join_key(MODELS_ROOT, name, "versions", str(version))


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_change_id() -> str:
    """A unique id for a pointer change that sorts by time (microseconds, then a random suffix)."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}"


def production_stack(history: list[dict[str, Any]]) -> list[int]:
    """Replay pointer changes, oldest first: a promotion pushes its version, a rollback pops one.

    The top is the current production version; the one below it is where a rollback goes.
    """
    stack: list[int] = []
    for record in history:
        if record.get("action") == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != record["version"]:
            stack.append(record["version"])
    return stack


def gate_verdict(manifest: dict[str, Any]) -> tuple[str | None, str]:
    """``(decision, reason)`` of the gate as the manifest records it; ``(None, "")`` when it records none."""
    verdict = manifest.get("verdict")
    if isinstance(verdict, dict):
        return verdict.get("decision"), str(verdict.get("reason") or "")
    return (verdict, "") if isinstance(verdict, str) else (None, "")


def weights_sha256(manifest: dict[str, Any]) -> str | None:
    """The SHA-256 of the version's weights file as its manifest lists it (None: it lists no weights)."""
    entry = manifest.get("files", {}).get(WEIGHTS_FILE)
    return entry["sha256"] if isinstance(entry, dict) else None


def model_names(store: Store) -> list[str]:
    """The names of the models that have anything in ``store``'s registry, sorted."""
    return sorted({parts[1] for key in store.list(MODELS_ROOT) if len(parts := key.split("/")) > 2})


@dataclass(frozen=True)
class AbandonedPush:
    """A version number claimed by a push that never wrote the manifest, and the files it left."""

    version: int
    claimed_at: str
    run_id: str | None
    files: list[str]


@dataclass(frozen=True)
class Pointer:
    """The production pointer as read: its version (None: nothing in production), ETag and record."""

    version: int | None
    etag: str | None
    record: dict[str, Any]


class Registry:
    """Numbered, immutable versions of one model and its production pointer, in a store."""

    def __init__(self, store: Store, name: str):
        self.store = store
        self.name = validate_model_name(name)
        self.root = join_key(MODELS_ROOT, name)

    def version_prefix(self, version: int) -> str:
        """The key prefix of ``version``'s files."""
        return version_key(self.name, version)

    def version_uri(self, version: int) -> str:
        """A store URI whose root is ``version``'s folder (what the predictor and KServe load)."""
        return f"{self.store.uri.rstrip('/')}/{self.version_prefix(version)}"

    def check_exists(self) -> None:
        """Refuse a model the store's registry does not hold, naming the models it does hold (or saying that
        it holds no registry at all), so that a typo in a name or a store URI is not read as "no versions"."""
        if next(self.store.iter_info(self.root), None) is not None:
            return
        if names := model_names(self.store):
            raise RegistryError(f"expected model {self.name!r} in the registry at {self.store.uri}, found no such "
                                f"model; the models there: {', '.join(names)}")
        raise RegistryError(f"expected a model registry ({MODELS_ROOT}/NAME/...) in the store at {self.store.uri}, found "
                            f"none: the store holds no registry at all; is it the store_uri the pipeline ran with?")

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
        """The manifest of a complete version; :class:`ModelFormatError` when it has none."""
        return self._parse_manifest(version, self._manifest_bytes(version))

    def manifest_sha256(self, version: int) -> str:
        """The SHA-256 of ``version``'s manifest bytes as stored now (what a deployment pins)."""
        data = self._manifest_bytes(version)
        self._parse_manifest(version, data)
        return manifest_digest(data)

    def verify(self, version: int) -> str:
        """Check every file of ``version`` against its manifest (downloading it), and the manifest against the
        digest recorded when the version was last promoted; return the manifest's digest."""
        return self._verified(version)[0]

    def _verified(self, version: int) -> tuple[str, dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
            manifest = self.download(version, Path(tmp))
            # The digest of the very bytes the files were checked against, not of a second read.
            return sha256_file(Path(tmp) / MANIFEST_FILE), manifest

    def identical_production(self, version: int) -> int | None:
        """The production version, when it is another version whose weights are byte for byte ``version``'s
        (the same SHA-256 of the weights file): a rerun on the same data, code and seed. Else None."""
        production = self.production().version
        if production is None or production == version:
            return None
        weights = weights_sha256(self.manifest(version))
        return production if weights is not None and weights == weights_sha256(self.manifest(production)) else None

    def _check_recorded(self, version: int, digest: str) -> None:
        recorded = self.promoted_digests().get(version)
        if recorded is not None and recorded != digest:
            # Manifests are written once: a different one is a forgery (files and hashes changed together).
            raise ModelFormatError(f"{MANIFEST_FILE} of {self.name} version {version} changed since it was promoted: "
                                   f"its SHA-256 is {digest}, the pointer's history recorded {recorded}")

    def promoted_digests(self) -> dict[int, str]:
        """Version → the manifest SHA-256 recorded the last time the pointer moved to it."""
        return {r["version"]: r["manifest_sha256"] for r in self.history() if r.get("manifest_sha256")}

    def _manifest_bytes(self, version: int) -> bytes:
        try:
            return self.store.read_bytes(join_key(self.version_prefix(version), MANIFEST_FILE))
        except NotFoundError:
            # Only a missing manifest means "no such version"; an unreadable or tampered one raises as it is.
            raise ModelFormatError(f"{self.name} has no complete version {version} (no {MANIFEST_FILE}); versions: {self.versions()}") from None

    def _parse_manifest(self, version: int, data: bytes) -> dict[str, Any]:
        source = f"{MANIFEST_FILE} of {self.name} version {version}"
        manifest = parse_manifest(data, source)
        if manifest.get("version") != version or manifest.get("model", self.name) != self.name:
            # A manifest copied from another version is self-consistent but describes other files.
            raise ModelFormatError(f"{source} says version {manifest.get('version')!r} of {manifest.get('model')!r}: "
                                   f"expected version {version} of {self.name!r}")
        return manifest

    def download(self, version: int, dest: Path) -> dict[str, Any]:
        """Download a version into ``dest``, verify every file's SHA-256 and, for a version that was promoted,
        the manifest's against the digest recorded then; return its manifest."""
        manifest = self.manifest(version)
        dest.mkdir(parents=True, exist_ok=True)
        for name in [*manifest["files"], MANIFEST_FILE]:  # plain names: checked by parse_manifest
            self.store.download_file(join_key(self.version_prefix(version), name), dest / name)
        verify_manifest(dest, where=f"{self.name} version {version} at {self.version_uri(version)}")
        self._check_recorded(version, sha256_file(dest / MANIFEST_FILE))
        return manifest

    # -- pushes that died before their manifest ---------------------------------------------------

    def abandoned(self, older_than: timedelta, now: datetime | None = None) -> list[AbandonedPush]:
        """Claimed versions with no manifest whose claim is older than ``older_than``: pushes that died half
        way. They are invisible to readers, but their files stay until :meth:`clear_abandoned`. A younger
        claim may belong to a push still uploading, and a version without a readable claim cannot be aged:
        both are left alone."""
        by_version: dict[int, list[str]] = {}
        for key in self.store.list(join_key(self.root, "versions")):
            if match := _VERSION_KEY.search(key):
                by_version.setdefault(int(match.group(1)), []).append(key)
        cutoff = (now or datetime.now(UTC)) - older_than
        found = []
        for version, keys in sorted(by_version.items()):
            claim_key = join_key(self.version_prefix(version), CLAIM_FILE)
            files = sorted(k for k in keys if k != claim_key)
            if join_key(self.version_prefix(version), MANIFEST_FILE) in keys or claim_key not in keys or not files:
                continue  # complete, unageable, or already cleared
            claim = json.loads(self.store.read_bytes(claim_key))
            if datetime.fromisoformat(claim["claimed_at"]) <= cutoff:
                found.append(AbandonedPush(version, claim["claimed_at"], claim.get("run_id"), files))
        return found

    def clear_abandoned(self, push: AbandonedPush) -> None:
        """Delete an abandoned push's files. The claim stays, so the number is never given out again."""
        if self.store.exists(join_key(self.version_prefix(push.version), MANIFEST_FILE)):
            raise ConflictError(f"{self.name} version {push.version} has a manifest now: it is complete, not abandoned; nothing deleted")
        for key in push.files:
            self.store.delete(key)

    # -- production pointer ---------------------------------------------------------------------

    def production(self) -> Pointer:
        """The production pointer as it is now (version None when nothing was promoted yet)."""
        found = self.store.read_with_etag(join_key(self.root, POINTER_FILE))
        if found is None:
            return Pointer(None, None, {})
        record = json.loads(found[0])
        return Pointer(record["version"], found[1], record)

    def promote(self, version: int, actor: str, expected: Pointer | None = None, reason: str = "",
                manifest_sha256: str | None = None, force: bool = False) -> Pointer:
        """Point production at ``version``; lose with :class:`ConflictError` if the pointer moved since ``expected``.

        Every file is verified first, and the pointer records the manifest's digest. ``manifest_sha256``:
        the digest the caller deployed; a manifest changed since then refuses the promotion. A version the
        gate rejected is refused (:class:`RegistryError`) unless ``force`` and a ``reason`` are given; the
        record then says ``forced``."""
        what = f"promote {self.name} version {version}"
        return self._move_pointer(version, "promote", actor, expected, reason, manifest_sha256, Override(force, what))

    def expect_production(self, version: int | None) -> Pointer:
        """The pointer, when production is still ``version`` (the champion a gate judged against);
        :class:`ConflictError` when it moved since, so a candidate is never promoted over a model it was
        not compared with."""
        pointer = self.production()
        if pointer.version != version:
            raise ConflictError(
                f"production of {self.name} moved from version {_or_none(version)} (the champion the gate compared "
                f"the candidate with) to version {pointer.version} (by {pointer.record.get('by', '?')}); the candidate "
                f"was never compared with version {pointer.version}: re-run the pipeline to evaluate it against that"
            )
        return pointer

    def rollback(self, actor: str, expected: Pointer | None = None, reason: str = "", force: bool = False) -> Pointer:
        """Point production back at the version that was in production before the current one: the history
        of pointer moves is replayed (:func:`production_stack`), so after promotions of 2, 3 and 4 two
        rollbacks go to 3, then 2. Landing on a version the gate rejected needs ``force`` and a ``reason``."""
        current = expected if expected is not None else self.production()
        stack = production_stack(self.history())
        if current.version is None or len(stack) < 2 or stack[-1] != current.version:
            raise RegistryError(
                f"expected an earlier production version of {self.name} to roll back to, found none "
                f"(production: {current.version}, promotions still in effect: {stack})"
            )
        override = Override(force, f"roll {self.name} back from version {current.version} to version {stack[-2]} (in "
                            f"production before it)", "promote the version you want instead (registry promote --version N), or ")
        return self._move_pointer(stack[-2], "rollback", actor, current, reason, None, override)

    def history(self) -> list[dict[str, Any]]:
        """Every change of the production pointer, oldest first."""
        keys = self.store.list(join_key(self.root, "history"))
        records = [json.loads(self.store.read_bytes(k)) for k in keys]
        pointer = self.production().record
        if pointer and pointer.get("change_id") not in {r.get("change_id") for r in records}:
            records.append(pointer)  # its writer died before recording it; the next change records it
        return records

    def served_windows(self) -> list[tuple[int | None, str, str | None]]:
        """Which version was in production when: ``(version, from, until)`` per pointer move, oldest first, with
        ISO times from the history (``until`` None: still in production). The drift report's audit trail."""
        moves = sorted(self.history(), key=lambda r: r.get("change_id", ""))  # change ids sort by microsecond
        ends = [m.get("at") for m in moves[1:]] + [None]
        return [(m.get("version"), m.get("at", ""), end) for m, end in zip(moves, ends)]

    def _move_pointer(self, version: int, action: str, actor: str, expected: Pointer | None, reason: str,
                      manifest_sha256: str | None, override: Override) -> Pointer:
        digest, manifest = self._verified(version)  # only complete versions whose every file matches its hash
        if manifest_sha256 is not None and digest != manifest_sha256:
            raise ConflictError(f"{MANIFEST_FILE} of {self.name} version {version} has SHA-256 {digest}, expected "
                                f"{manifest_sha256} (the one deployed): it changed since; nothing promoted")
        # The verdict of the very manifest just verified, not of an earlier read.
        forced = override.check(version, manifest, reason)
        current = expected if expected is not None else self.production()
        if current.record.get("change_id"):
            self._append_history(current.record)  # no-op unless the previous writer died before recording it
        record = {"version": version, "previous": current.version, "action": action, "by": actor,
                  "reason": reason, "at": now_iso(), "change_id": new_change_id(), "manifest_sha256": digest,
                  "forced": forced}
        try:
            etag = self.store.write_if_match(join_key(self.root, POINTER_FILE), json.dumps(record, indent=2).encode(), current.etag)
        except ConflictError:
            now = self.production().version
            raise ConflictError(
                f"{action} of {self.name} to version {version} lost a race: expected production at version "
                f"{current.version}, found it moved to version {now} by another writer; re-read and retry"
            ) from None
        self._append_history(record)
        return Pointer(version, etag, record)

    def _append_history(self, record: dict[str, Any]) -> bool:
        key = join_key(self.root, "history", f"{record['change_id']}.json")
        return self.store.create_exclusive(key, json.dumps(record, indent=2).encode())


@dataclass(frozen=True)
class Override:
    """Whether a pointer move may land on a version the gate rejected (``force``), what the move is in the
    words of a refusal (``what``: "promote digits version 3"), and what else to do (``instead``)."""

    force: bool
    what: str
    instead: str = ""

    def check(self, version: int, manifest: dict[str, Any], reason: str) -> bool:
        """True when the move overrides the gate's rejection of ``version`` (forced, with a reason); refuse a
        rejected version otherwise. False when the gate did not reject it."""
        decision, why = gate_verdict(manifest)
        if decision != REJECTED:
            return False
        if not self.force:
            raise RegistryError(f"refusing to {self.what}: expected a version the gate accepted, found version {version} "
                                f"rejected ({why or 'no reason recorded'}); nothing moved: {self.instead}to do it anyway, "
                                f"pass --force with --reason TEXT (both are recorded in the history)")
        if not reason.strip():
            raise RegistryError(f"expected --reason TEXT with --force (it is recorded in the history), got none: "
                                f"refusing to {self.what}, which the gate rejected; nothing moved")
        return True


_VERSION_KEY = re.compile(r"/versions/(\d+)/")


def _or_none(version: int | None) -> str:
    return "none (production was empty)" if version is None else str(version)


def pinned_uri(uri: str, manifest_sha256: str) -> str:
    """``uri`` pinned to one manifest: :func:`materialize` refuses a version whose manifest hashes otherwise."""
    if not SHA256_HEX.fullmatch(manifest_sha256):
        raise ValueError(f"expected a manifest SHA-256 of 64 lowercase hex digits, got {manifest_sha256!r}")
    return f"{uri}{PIN_MARK}{manifest_sha256}"


def split_pinned(uri: str) -> tuple[str, str | None]:
    """``(uri without the pin, manifest digest or None)``."""
    base, mark, digest = uri.rpartition(PIN_MARK)
    if not mark:
        return uri, None
    if not SHA256_HEX.fullmatch(digest):
        raise StoreError(f"expected {PIN_MARK}<64 lowercase hex digits> at the end of model URI {uri!r}, got {digest!r}")
    return base, digest


def materialize(uri: str, scratch: Path) -> Path:
    """A local folder holding the model version at ``uri``: the folder itself when it is local,
    otherwise a download into ``scratch``. Every URI is a store root, so a version URI needs no parsing.
    A pinned URI (:func:`pinned_uri`) must find exactly that manifest, so its file checks can be trusted."""
    base, digest = split_pinned(uri)
    store = open_store(base)
    if isinstance(store, LocalStore):
        if not store.root.is_dir():
            raise StoreError(f"expected a model version folder at {base}, found nothing there")
        folder = store.root
    elif store.download_prefix("", scratch):
        folder = scratch
    else:
        raise StoreError(f"expected model files under {base}, found none")
    if digest is not None:
        check_manifest_digest(folder, digest)
    return folder


def check_manifest_digest(folder: Path, expected: str) -> None:
    """Refuse ``folder`` unless its ``MANIFEST.json`` bytes hash to ``expected``."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ModelFormatError(f"{folder} has no {MANIFEST_FILE}: not a complete model version")
    if (actual := sha256_file(path)) != expected:
        raise ModelFormatError(f"{MANIFEST_FILE} in {folder} has SHA-256 {actual}, expected {expected} (the promoted manifest)")

