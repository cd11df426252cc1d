"""The Azure Blob backend of :class:`components.store.Store`.

Which URIs name a Blob store, and which credential opens them:

- ``https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]``: Azure Blob, authenticated with
  ``DefaultAzureCredential`` (workload identity on AKS, ``az login`` on a laptop).
- Any ``http(s)`` URI under the blob endpoint of the connection string in ``AZURE_STORAGE_CONNECTION_STRING``:
  that connection string's credential. For Azurite the endpoint is path-style
  (``http://127.0.0.1:PORT/devstoreaccount1``), so its store URIs are
  ``http://127.0.0.1:PORT/devstoreaccount1/CONTAINER[/PREFIX]``. A connection string for a real account
  applies to that account's ``https://ACCOUNT.blob.core.windows.net/…`` URIs; other accounts still use
  ``DefaultAzureCredential``.

A URI never carries a credential: one with a user, a query string (a SAS token) or a fragment is rejected,
and error messages show it with those parts removed. The connection string stays inside the SDK client.

Every write records the object's SHA-256 in the blob metadata (``sha256``) and every read checks it, so a
blob changed behind the store's back (or corrupted) fails loudly, naming the blob. Large files move in
blocks and ranges of a few MiB (:class:`BlobSettings`), one at a time per object (many objects move in
parallel over one client: :mod:`components.parallel`). Transient failures are retried a bounded number of
times (:class:`BoundedRetry`: a busy service with exponential backoff, a dead endpoint or a response cut
short briefly), and every failure ends as one :class:`StoreError` line naming the object, the endpoint and
what happened. Conditional writes use ``If-None-Match: *`` and ``If-Match: ETAG``; each write also records
a random ``writeid`` so that a retried request whose first attempt did land is recognised as this call's
own write rather than reported as a lost race.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.core.pipeline.transport._bigger_block_size_http_adapters import BiggerBlockSizeHTTPAdapter
from azure.storage.blob import (
    BlobClient,
    BlobProperties,
    BlobServiceClient,
    ContainerClient,
    ExponentialRetry,
    StorageErrorCode,
)
from urllib3.util.retry import Retry

from components.errors import ConflictError, NotFoundError, StoreError
from components.store import ObjectInfo, Store, join_key, validate_key

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
HASH_METADATA = "sha256"
WRITER_METADATA = "writeid"
AZURE_BLOB_HOST = re.compile(r"^[a-z0-9]{3,24}\.blob\.core\.windows\.net$")
# What the OS or the HTTP library said, inside the SDK's long messages (group 1, else the whole match).
FAILURE_REASONS = (
    re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)"),  # Connection refused, Connection reset by peer, Name or service not known
    re.compile(r"IncompleteRead\(\d+ bytes read, \d+ more expected\)"),
    re.compile(r"RemoteDisconnected\('([^']+)'\)"),  # Remote end closed connection without response
)
# azure-core's transport logs "Incomplete download." (a warning) for every response cut short; the StoreError
# says it once. With logging unconfigured (the CLIs), Python's last-resort handler would print each one to
# stderr; a NullHandler stops only that fallback: handlers an application configures still get the records.
SDK_TRANSPORT_LOGGER = "azure.core.pipeline.transport"
_NO_FALLBACK = logging.NullHandler()
CONTAINER_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
BLOB_URI_FORMS = (
    "https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX], or a URI under the blob endpoint of "
    f"{CONNECTION_STRING_ENV} (Azurite: http://127.0.0.1:PORT/devstoreaccount1/CONTAINER[/PREFIX])"
)


@dataclass(frozen=True)
class BlobSettings:
    """Transfer and retry settings: bounded transfer sizes, bounded retries.

    Downloads use smaller ranges than uploads because azure-core briefly holds a list of one slot per
    byte of each range while reading it (``list()`` of a generator whose ``len()`` is the byte count):
    about 9x the range size in transient memory, so 4 MiB ranges peak near 40 MiB whatever the blob size.

    Retries (:class:`BoundedRetry`) depend on what went wrong. A service that answered "busy" (503) or
    500 is waited for with exponential backoff: ``initial_backoff + increment_base**n`` before retry n,
    about 2, 2.75 and 3.9 s (9 s in all; 1 s + 2**n waited 17 s, the SDK's defaults well over a minute).
    No connection at all, or a response that broke off or was cut short, is retried after
    ``quick_backoff`` and only twice: a dead or wrong endpoint fails in about a second.
    """

    upload_block_size: int = 8 * 1024 * 1024
    download_chunk_size: int = 4 * 1024 * 1024
    retry_total: int = 5  # retries of one request, whatever the causes
    retry_status: int = 3  # of those, after a retryable answer (503 Server Busy, 500, 408)
    retry_connect: int = 2  # after no connection (refused, unknown host, connect timeout)
    retry_read: int = 2  # after a response that broke off (reset, read timeout) or was cut short
    initial_backoff: float = 0.5  # seconds, plus increment_base**n, before retry n after an answer
    increment_base: float = 1.5
    jitter: float = 0.5
    quick_backoff: float = 0.5  # seconds before retrying a failed connection or a broken response
    connection_timeout: int = 20
    read_timeout: int = 120
    max_connections: int = 64  # kept open per host: parallel reads need more than the SDK's default 10

    def transport(self) -> RequestsTransport:
        """The SDK's requests transport with a connection pool sized for parallel reads and writes."""
        logging.getLogger(SDK_TRANSPORT_LOGGER).addHandler(_NO_FALLBACK)  # once: addHandler skips a handler it has
        session = requests.Session()
        # As azure-core sets up its own sessions (it retries in its policy, never in urllib3), plus the pool size.
        adapter = BiggerBlockSizeHTTPAdapter(max_retries=Retry(total=False, redirect=False, raise_on_status=False),
                                             pool_connections=4, pool_maxsize=self.max_connections)
        for scheme in ("http://", "https://"):
            session.mount(scheme, adapter)
        return RequestsTransport(session=session, session_owner=True)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`BlobServiceClient` (bounded transfer sizes, the retry policy)."""
        return {
            "retry_policy": BoundedRetry(self),
            "max_single_put_size": self.upload_block_size,
            "max_block_size": self.upload_block_size,
            "max_single_get_size": self.download_chunk_size,
            "max_chunk_get_size": self.download_chunk_size,
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
            "transport": self.transport(),
        }


class BoundedRetry(ExponentialRetry):
    """The SDK's exponential retry, bounded per cause (:class:`BlobSettings`).

    Two changes to the SDK's policy: a response cut short (``IncompleteReadError``, a ``DecodeError``) counts
    as the read failure it is (the SDK counts it only against the total, so it was retried five times with
    the longest backoffs), and a failure that brought no answer waits ``quick_backoff``, not the
    exponential backoff meant for a service that asked to be left alone.
    """

    def __init__(self, settings: BlobSettings):
        super().__init__(initial_backoff=settings.initial_backoff, increment_base=settings.increment_base,
                         retry_total=settings.retry_total, random_jitter_range=settings.jitter,
                         retry_connect=settings.retry_connect, retry_read=settings.retry_read,
                         retry_status=settings.retry_status)
        self.quick_backoff = settings.quick_backoff

    def increment(self, settings: dict[str, Any], request: Any, response: Any = None, error: AzureError | None = None) -> bool:
        if isinstance(error, DecodeError):
            settings["read"] -= 1
        settings["no_answer"] = error is not None
        return super().increment(settings, request, response=response, error=error)

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        if settings.get("no_answer"):
            return self.quick_backoff
        return super().get_backoff_time(settings)


@dataclass(frozen=True)
class BlobLocation:
    """Where a Blob store lives: the account's blob endpoint, a container and a key prefix."""

    endpoint: str  # no trailing slash: https://ACCOUNT.blob.core.windows.net or http://HOST:PORT/ACCOUNT
    container: str
    prefix: str
    uses_connection_string: bool

    @property
    def uri(self) -> str:
        """The canonical store URI (it never holds a credential)."""
        tail = f"/{quote(self.prefix, safe='/')}" if self.prefix else ""
        return f"{self.endpoint}/{self.container}{tail}"


def redact_uri(uri: str) -> str:
    """``uri`` without user info, query string or fragment: safe to show in a message."""
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path}"


def normalize_endpoint(url: str) -> str:
    """An endpoint URL with a lower-case scheme and host and no trailing slash."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1].lower()
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def parse_blob_uri(uri: str, connection_endpoint: str | None) -> BlobLocation:
    """Split a Blob store URI into endpoint, container and prefix (rules in the module docstring).

    ``connection_endpoint`` is the blob endpoint of the connection string in the environment, if any.
    """
    parts = urlsplit(uri)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise StoreError(
            "expected a store URI without user, query string or fragment (keys and SAS tokens come from the "
            f"environment, never from a URI), got {redact_uri(uri)} with those parts removed"
        )
    try:
        port = parts.port
    except ValueError:  # urllib's way of saying the port is not a number in range
        raise StoreError(f"expected a host and an optional numeric port in the store URI, got {redact_uri(uri)}") from None
    base = normalize_endpoint(f"{parts.scheme}://{parts.netloc}")
    path = parts.path
    if connection_endpoint and _is_under(base + path, connection_endpoint):
        endpoint, rest, from_env = connection_endpoint, (base + path)[len(connection_endpoint) :], True
    elif parts.scheme == "https" and AZURE_BLOB_HOST.match(parts.hostname or "") and port is None:
        endpoint, rest, from_env = base, path, False
    else:
        found_env = f"set, for endpoint {connection_endpoint}" if connection_endpoint else "not set"
        raise StoreError(f"expected {BLOB_URI_FORMS}; {CONNECTION_STRING_ENV} is {found_env}; got {redact_uri(uri)}")
    container, prefix = _split_container(rest, uri)
    return BlobLocation(endpoint, container, prefix, from_env)


def _is_under(url: str, endpoint: str) -> bool:
    return url == endpoint or url.startswith(endpoint + "/")


def _split_container(rest: str, uri: str) -> tuple[str, str]:
    container, _, prefix = rest.lstrip("/").partition("/")
    if not CONTAINER_NAME.match(container):
        raise StoreError(
            "expected a container name of 3-63 lowercase letters, digits and single hyphens after the "
            f"endpoint, got {container!r} in {redact_uri(uri)}"
        )
    prefix = unquote(prefix.removesuffix("/"))
    return container, validate_key(prefix) if prefix else ""


def service_client(location: BlobLocation, connection_string: str | None, settings: BlobSettings) -> BlobServiceClient:
    """A client for ``location``'s account, authenticated as the module docstring says."""
    if location.uses_connection_string and connection_string:
        return BlobServiceClient.from_connection_string(connection_string, **settings.client_options())
    # Imported here: building the credential chain is only needed for real Azure accounts.
    from azure.identity import DefaultAzureCredential

    return BlobServiceClient(location.endpoint, credential=DefaultAzureCredential(), **settings.client_options())


def connection_string_endpoint(connection_string: str) -> str:
    """The blob endpoint that ``connection_string`` names (the string itself never leaves the SDK)."""
    try:
        client = BlobServiceClient.from_connection_string(connection_string)
    except ValueError:
        # The SDK's message can quote the string; this one names only the variable.
        raise StoreError(
            f"expected {CONNECTION_STRING_ENV} to be an Azure Storage connection string with a blob endpoint, "
            "found one that does not parse"
        ) from None
    return normalize_endpoint(client.url)


class BlobStore(Store):
    """A container (and optional key prefix) in Azure Blob Storage or Azurite."""

    def __init__(self, container: ContainerClient, location: BlobLocation, settings: BlobSettings | None = None):
        self._container = container
        self.location = location
        self.settings = settings or BlobSettings()
        self.uri = location.uri

    @classmethod
    def from_uri(cls, uri: str, settings: BlobSettings | None = None, environ: Mapping[str, str] | None = None) -> BlobStore:
        """Open the store that ``uri`` names, with credentials from ``environ`` (default: ``os.environ``)."""
        settings = settings or BlobSettings()
        connection_string = (os.environ if environ is None else environ).get(CONNECTION_STRING_ENV) or None
        endpoint = connection_string_endpoint(connection_string) if connection_string else None
        location = parse_blob_uri(uri, endpoint)
        client = service_client(location, connection_string, settings)
        return cls(client.get_container_client(location.container), location, settings)

    def __repr__(self) -> str:
        return f"BlobStore({self.uri!r})"

    # -- reads ----------------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        found = self.read_with_etag(key)
        if found is None:
            raise NotFoundError(f"no object {key!r} in store {self.uri}")
        return found[0]

    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        with self._translate("read", key):
            try:
                downloader = self._blob(key).download_blob(max_concurrency=1)
            except ResourceNotFoundError as exc:
                if _is_container_missing(exc):
                    raise
                return None
            data = downloader.readall()
        self._check_hash(key, downloader.properties.metadata, hashlib.sha256(data).hexdigest())
        return data, downloader.properties.etag

    def download_file(self, key: str, path: Path) -> None:
        # Into a temporary file beside the target: a blob that fails its hash check leaves nothing behind.
        tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            with self._translate("download", key), open(tmp, "wb") as out:
                downloader = self._blob(key).download_blob(max_concurrency=1)
                digest = _copy_chunks(downloader.chunks(), out)
            self._check_hash(key, downloader.properties.metadata, digest)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        with self._translate("check", key):
            return self._blob(key).exists()

    def list(self, prefix: str = "") -> list[str]:
        return list(self.list_info(prefix))

    def iter_info(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        base = join_key(self.location.prefix, validate_key(prefix) if prefix else "")
        with self._translate("list", prefix or "/"):
            found = False
            # The service lists blobs sorted by name (UTF-8 byte order, which is str order), page by page.
            for blob in self._container.list_blobs(name_starts_with=f"{base}/" if base else None):
                found = True
                yield self._key(blob.name), ObjectInfo(int(blob.size), str(blob.etag))
            if not found and prefix:
                # The prefix may name one object, as LocalStore.list_info does for a file.
                props = self._properties(prefix)
                if props is not None:
                    yield prefix, ObjectInfo(int(props.size), str(props.etag))

    # -- writes ---------------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._translate("write", key):
            self._blob(key).upload_blob(data, overwrite=True, metadata=_metadata(data, _new_writer()))

    def upload_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as source, self._translate("upload", key):
            if os.fstat(source.fileno()).st_size > self.settings.upload_block_size:
                self._upload_blocks(self._blob(key), source)
                return
            data = source.read()  # at most one chunk: a single request
            self._blob(key).upload_blob(data, overwrite=True, metadata=_metadata(data, _new_writer()))

    def _upload_blocks(self, blob: BlobClient, source: BinaryIO) -> None:
        # One block in memory at a time; uncommitted blocks are invisible, so the commit is the atomic step.
        writer = _new_writer()
        digest = hashlib.sha256()
        block_ids = []
        for index, chunk in enumerate(iter(lambda: source.read(self.settings.upload_block_size), b"")):
            digest.update(chunk)
            block_ids.append(f"{writer}-{index:08d}")
            blob.stage_block(block_ids[-1], chunk)
        blob.commit_block_list(block_ids, metadata={HASH_METADATA: digest.hexdigest(), WRITER_METADATA: writer})

    def delete(self, key: str) -> None:
        with self._translate("delete", key):
            try:
                self._blob(key).delete_blob(delete_snapshots="include")
            except ResourceNotFoundError as exc:
                if _is_container_missing(exc):
                    raise

    def create_exclusive(self, key: str, data: bytes) -> bool:
        writer = _new_writer()
        with self._translate("create", key):
            try:
                self._blob(key).upload_blob(data, overwrite=False, metadata=_metadata(data, writer))
            except ResourceExistsError:
                found = self._properties(key)
                return found is not None and found.metadata.get(WRITER_METADATA) == writer
        return True

    def write_if_match(self, key: str, data: bytes, etag: str | None) -> str:
        writer = _new_writer()
        condition: dict[str, Any] = {"overwrite": False}
        if etag is not None:
            condition = {"overwrite": True, "etag": etag, "match_condition": MatchConditions.IfNotModified}
        with self._translate("write", key):
            try:
                return self._blob(key).upload_blob(data, metadata=_metadata(data, writer), **condition)["etag"]
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError) as exc:
                if isinstance(exc, ResourceNotFoundError) and _is_container_missing(exc):
                    raise
                return self._own_write_or_conflict(key, etag, writer)

    def _own_write_or_conflict(self, key: str, etag: str | None, writer: str) -> str:
        found = self._properties(key)
        if found is not None and found.metadata.get(WRITER_METADATA) == writer:
            return found.etag  # an earlier attempt of this very call landed; its response was lost
        raise ConflictError(
            f"{key!r} in {self.uri} changed since it was read "
            f"(expected ETag {etag or 'none: object absent'}, found {found.etag if found else 'no object'})"
        )

    def ensure_root(self) -> None:
        """A Blob store's root is its container: create it if it does not exist."""
        self.ensure_container()

    def ensure_container(self) -> None:
        """Create the container if it does not exist (needs permission to create containers)."""
        with self._translate("create container for", "/"):
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass

    # -- helpers --------------------------------------------------------------------------------

    def _blob(self, key: str) -> BlobClient:
        return self._container.get_blob_client(join_key(self.location.prefix, validate_key(key)))

    def _key(self, name: str) -> str:
        return name[len(self.location.prefix) + 1 :] if self.location.prefix else name

    def _properties(self, key: str) -> BlobProperties | None:
        try:
            return self._blob(key).get_blob_properties()
        except ResourceNotFoundError:
            return None

    def _check_hash(self, key: str, metadata: Mapping[str, str], actual: str) -> None:
        recorded = metadata.get(HASH_METADATA)
        where = f"blob {join_key(self.location.prefix, key)!r} in container {self.location.container!r} ({self.location.endpoint})"
        if recorded is None:
            raise StoreError(
                f"expected {where} to carry the SHA-256 recorded at upload (metadata {HASH_METADATA!r}), found "
                "none: it was not written through this store, or its metadata was replaced"
            )
        if recorded != actual:
            raise StoreError(
                f"{where} has SHA-256 {actual}, but {recorded} was recorded at upload: it was modified or corrupted"
            )

    @contextmanager
    def _translate(self, action: str, key: str) -> Iterator[None]:
        """Turn the SDK's errors into :class:`StoreError` messages that name the object and the endpoint."""
        try:
            yield
        except ResourceNotFoundError as exc:
            if _is_container_missing(exc):
                raise StoreError(
                    f"expected container {self.location.container!r} at {self.location.endpoint}, found none "
                    f"(while trying to {action} {key!r}): create it or fix the store URI"
                ) from None
            raise NotFoundError(f"no object {key!r} in store {self.uri}") from None
        except ResourceModifiedError:
            raise StoreError(f"{key!r} in {self.uri} changed while it was being read: retry") from None
        except ClientAuthenticationError as exc:
            reason = str(exc.message or exc).splitlines()[0]
            raise StoreError(f"could not authenticate to {self.location.endpoint} to {action} {key!r}: {reason}") from None
        except HttpResponseError as exc:
            if exc.status_code is None:  # no status: the body broke off (the SDK's IncompleteReadError, or its wrapper)
                raise StoreError(self._no_answer(action, key, exc)) from exc
            raise StoreError(
                f"could not {action} {key!r} in {self.uri}: HTTP {exc.status_code} {_error_code(exc) or exc.reason}"
            ) from None
        except AzureError as exc:
            raise StoreError(self._no_answer(action, key, exc)) from exc

    def _no_answer(self, action: str, key: str, exc: AzureError) -> str:
        """What failed when no usable answer came back; the request was retried (BoundedRetry) before this."""
        reason = _os_reason(exc) or type(exc).__name__
        where = f"could not {action} {key!r} at {self.location.endpoint} (container {self.location.container!r})"
        if isinstance(exc, ServiceRequestError):
            return f"{where}: no connection ({reason}) after retrying; expected the Blob service there: is it running, is the store URI right?"
        if isinstance(exc, HttpResponseError):
            return f"{where}: every response was cut short before its end ({reason}); the service is failing, retried and gave up"
        return f"{where}: the connection broke off before a complete response ({reason}); retried and gave up"


def _copy_chunks(chunks: Iterator[bytes], out: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def _metadata(data: bytes, writer: str) -> dict[str, str]:
    return {HASH_METADATA: hashlib.sha256(data).hexdigest(), WRITER_METADATA: writer}


def _new_writer() -> str:
    return uuid.uuid4().hex


def _error_code(exc: HttpResponseError) -> str:
    # The SDK gives a StorageErrorCode member or the raw string from the response; an error it raised before
    # any answer was parsed (a response cut short) has no error_code at all.
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _os_reason(exc: BaseException) -> str:
    """The operating system's or HTTP library's words inside the SDK's message (:data:`FAILURE_REASONS`);
    '' when there are none."""
    for pattern in FAILURE_REASONS:
        if found := pattern.search(str(exc)):
            return found.group(found.lastindex or 0).strip()
    return ""


def _is_container_missing(exc: ResourceNotFoundError) -> bool:
    return _error_code(exc) == StorageErrorCode.CONTAINER_NOT_FOUND.value
