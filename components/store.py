"""One store interface for data, checkpoints and models, with a local-folder backend.

A store URI names a root; everything below it is addressed by a relative, ``/``-separated key.

- a local path or ``file:///abs/path``: :class:`LocalStore` (the embedded default);
- ``https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]``, or a URI under the blob endpoint of the
  connection string in ``AZURE_STORAGE_CONNECTION_STRING`` (Azurite):
  :class:`components.blob_store.BlobStore` (its docstring has the exact rules).

Connection strings and keys never appear in a URI: credentials come from the environment.
Writes are atomic (a reader sees the old object or the new one, never half of one), and two
conditional operations give the registry its guarantees: :meth:`Store.create_exclusive`
(write only if absent) and :meth:`Store.write_if_match` (compare-and-swap on an ETag).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from urllib.parse import unquote, urlparse

from components.errors import ConflictError, NotFoundError, StoreError

LOCAL_PRIVATE_PREFIXES = (".tmp-", ".lock-")  # LocalStore's own temporary and lock files


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise :class:`StoreError`."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"expected a relative key like 'models/name/file.json', got {key!r}")
    return key


def join_key(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts and stray slashes."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing tells about an object without reading it: its size, and a token that changes
    whenever its content does (the Blob ETag; for a local file its modification time and inode)."""

    size: int
    version: str


class Store(ABC):
    """Where data, checkpoints and model versions live. One object serves many threads at once."""

    uri: str

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Return the object's bytes; raise :class:`NotFoundError` when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically."""

    @abstractmethod
    def upload_file(self, key: str, path: Path) -> None:
        """Copy a local file to the object, streaming, atomically."""

    def move_file(self, key: str, path: Path) -> None:
        """Store the local file ``path`` as the object and remove the file, whatever happens: an upload
        for a remote store, a rename (not a byte copied) for a folder on the same file system."""
        try:
            self.upload_file(key, path)
        finally:
            path.unlink(missing_ok=True)

    @abstractmethod
    def download_file(self, key: str, path: Path) -> None:
        """Copy the object to a local file, streaming; raise :class:`NotFoundError` when it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (recursively), sorted."""

    def list_info(self, prefix: str = "") -> dict[str, ObjectInfo]:
        """Keys under ``prefix`` (recursively, sorted) with their sizes and versions, from one listing."""
        return dict(self.iter_info(prefix))

    @abstractmethod
    def iter_info(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        """:meth:`list_info` as it is listed, in sorted key order: for listings too big to hold as a dict."""

    def local_path(self, key: str) -> Path | None:
        """The object's path when it is a file on this machine (readable in place), else ``None``."""
        return None

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write the object only if it does not exist; return whether this call created it."""

    @abstractmethod
    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """Return ``(data, etag)``, or ``None`` when the object does not exist."""

    @abstractmethod
    def write_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        """Replace the object only if its ETag is still ``etag`` (``None``: only if absent).

        Returns the new ETag; raises :class:`ConflictError` when another writer got there first.
        """

    def ensure_root(self) -> None:
        """Make the store's root exist before first use (a Blob container); overridden where needed."""
        return  # a local folder is created by its first write

    def download_prefix(self, prefix: str, dest: Path) -> list[Path]:
        """Download every object under ``prefix`` into ``dest``, keeping relative paths."""
        paths = []
        for key in self.list(prefix):
            target = dest / key[len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.download_file(key, target)
            paths.append(target)
        return paths


class LocalStore(Store):
    """A folder on the local file system; atomic by write-to-temp-then-rename."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no object {key!r} in store {self.uri}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._atomic_target(key) as tmp:
            tmp.write_bytes(data)

    def upload_file(self, key: str, path: Path) -> None:
        with self._atomic_target(key) as tmp:
            shutil.copyfile(path, tmp)

    def move_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)  # atomic, like every write here
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            super().move_file(key, path)  # another file system: copy, then remove

    def download_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFoundError(f"no object {key!r} in store {self.uri}")
        shutil.copyfile(source, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        return list(self.list_info(prefix))

    def iter_info(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            yield join_key(prefix), _file_info(base)
        elif base.is_dir():
            yield from _walk(str(base), f"{join_key(prefix)}/" if prefix else "")

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._temp_beside(path)
        try:
            tmp.write_bytes(data)
            # link() fails when the target exists: the check and the creation are one atomic step, and
            # a reader never sees the object before its content is complete (O_EXCL would show it empty).
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, _etag(data)

    def write_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A lock file serialises compare-and-swap between processes on this machine.
        with open(path.with_name(f".lock-{path.name}"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read_with_etag(key)
            current_etag = current[1] if current else None
            if current_etag != etag:
                raise ConflictError(
                    f"{key!r} changed since it was read (expected ETag {etag}, found {current_etag})"
                )
            self.write_bytes(key, data)
        return _etag(data)

    @staticmethod
    def _temp_beside(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        tmp.chmod(0o644)  # mkstemp creates 0600; stored objects are ordinary readable files
        return tmp

    @contextmanager
    def _atomic_target(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        tmp = self._temp_beside(path)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _walk(folder: str, prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
    """``(key, info)`` of every file below ``folder`` (whose keys start with ``prefix``), in the order the keys
    sort as strings: a folder sorts as its name + "/", so "a-b" (0x2d) comes before the keys under "a/"
    (0x2f). Symbolic links to folders are not followed. Strings, not Paths: a million files list in seconds."""
    with os.scandir(folder) as scan:
        # Names only, not the DirEntry objects (several times the size): a flat folder may hold a million files.
        names = sorted(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name for e in scan)
    for name in names:
        if name.endswith("/"):
            yield from _walk(os.path.join(folder, name[:-1]), prefix + name)
        elif not name.startswith(LOCAL_PRIVATE_PREFIXES):
            try:
                info = os.stat(os.path.join(folder, name))  # follows a link to a file, as is_file() did
            except FileNotFoundError:  # removed since the scan, or a dangling link
                continue
            if S_ISREG(info.st_mode):
                yield prefix + name, _stat_info(info)


def _file_info(path: Path) -> ObjectInfo:
    return _stat_info(path.stat())


def _stat_info(stat: os.stat_result) -> ObjectInfo:
    return ObjectInfo(stat.st_size, f"{stat.st_mtime_ns}-{stat.st_ino}")


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def open_store(uri: str) -> Store:
    """Open the store that ``uri`` names; raise :class:`StoreError` for anything else."""
    if not uri or not uri.strip():
        raise StoreError("expected a store URI (a local path, file://… or https://ACCOUNT.blob.core.windows.net/CONTAINER/…), got an empty string")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme == "file" else uri
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise StoreError(f"expected file:///absolute/path, got {uri!r} (host {parsed.netloc!r})")
        return LocalStore(Path(path).expanduser())
    if parsed.scheme in ("http", "https"):
        # Imported here: the Azure SDK is only loaded for Blob URIs.
        from components.blob_store import BlobStore

        return BlobStore.from_uri(uri)
    raise StoreError(
        "expected a local path, file:///path or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX, "
        f"got a URI with scheme {parsed.scheme!r}: {parsed.scheme}://{parsed.hostname or ''}{parsed.path}"
    )
