"""The store contract, one suite over both backends (a local folder and Azure Blob on Azurite).

Blob-only behaviour follows: hashes checked against tampering, URI rules, retries of transient faults
through a failing proxy, and keys kept out of logs and messages.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tracemalloc
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from components.blob_store import CONNECTION_STRING_ENV, BlobSettings, BlobStore, parse_blob_uri
from components.errors import ConflictError, NotFoundError, StoreError
from components.store import LocalStore, Store, open_store
from tests.azurite import Azurite
from tests.flaky_proxy import flaky_proxy
from tests.helpers import run_together

LARGE_FILE_MIB = 64
# Backoff of 0.05 s + 0.1**n s: the retry tests wait milliseconds, not the production seconds.
FAST_RETRIES = BlobSettings(retry_total=3, initial_backoff=0.05, increment_base=0.1, jitter=0.01)


def write_random_file(path: Path, mebibytes: int) -> str:
    """Write ``mebibytes`` MiB of random bytes to ``path``, a MiB at a time; return their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mebibytes):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- the contract, on both backends ---------------------------------------------------------------


def test_bytes_round_trip_and_replace(store_uri: str) -> None:
    store = open_store(store_uri)
    store.write_bytes("a/b.json", b'{"v": 1}')
    store.write_bytes("a/b.json", b'{"v": 2}')
    assert store.read_bytes("a/b.json") == b'{"v": 2}'
    assert store.exists("a/b.json") and not store.exists("a/c.json")


def test_large_file_streams_both_ways_with_identical_content_and_bounded_memory(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri)
    source, target = tmp_path / "big.bin", tmp_path / "big.copy"
    expected = write_random_file(source, LARGE_FILE_MIB)
    tracemalloc.start()
    try:
        store.upload_file("data/big.bin", source)
        store.download_file("data/big.bin", target)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert file_sha256(target) == expected
    # Streaming holds one block or range at a time (plus the SDK's transient overhead), never the whole file.
    assert peak < LARGE_FILE_MIB << 20, f"peak Python allocation {peak >> 20} MiB for a {LARGE_FILE_MIB} MiB file"


def test_move_file_stores_the_file_and_removes_it(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri)
    source = tmp_path / "shard.bin"
    source.write_bytes(b"records" * 1000)
    store.move_file("data/shard.bin", source)
    assert store.read_bytes("data/shard.bin") == b"records" * 1000
    assert not source.exists()


def test_local_move_file_across_file_systems_copies_then_removes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    store = LocalStore(tmp_path / "store")
    source = tmp_path / "shard.bin"
    source.write_bytes(b"x" * 100)

    real_replace = os.replace

    def cross_device(src, dst):  # a rename of the scratch file fails as it does from another file system
        if Path(src) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", cross_device)
    store.move_file("shard.bin", source)
    assert (tmp_path / "store" / "shard.bin").read_bytes() == b"x" * 100
    assert not source.exists()


def test_missing_objects_are_reported_as_not_found(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri)
    with pytest.raises(NotFoundError, match="no object 'nope/x.bin'"):
        store.read_bytes("nope/x.bin")
    with pytest.raises(NotFoundError, match="no object 'nope/x.bin'"):
        store.download_file("nope/x.bin", tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()
    assert store.read_with_etag("nope/x.bin") is None
    store.delete("nope/x.bin")  # deleting what is not there is not an error


def test_list_is_recursive_sorted_and_bounded_by_path_segments(store_uri: str) -> None:
    store = open_store(store_uri)
    for key in ["c.txt", "a/b/2.txt", "ab/3.txt", "a/1.txt"]:
        store.write_bytes(key, key.encode())
    assert store.list() == ["a/1.txt", "a/b/2.txt", "ab/3.txt", "c.txt"]
    assert store.list("a") == ["a/1.txt", "a/b/2.txt"]  # not ab/3.txt
    assert store.list("a/1.txt") == ["a/1.txt"]
    assert store.list("zzz") == []
    store.delete("c.txt")
    assert "c.txt" not in store.list()


def test_the_streamed_listing_comes_in_string_order_even_where_folders_and_names_interleave(store_uri: str) -> None:
    """Preparation streams iter_info into compact arrays without sorting it: the order is the contract."""
    store = open_store(store_uri)
    keys = ["a/x.png", "a-b/y.png", "a b/z.png", "ab/w.png", "a.png", "blåbær/1.png", "a/b/deep.png", "Z/upper.png"]
    for key in keys:
        store.write_bytes(key, b"x")
    listed = [key for key, _ in store.iter_info()]
    assert listed == sorted(keys)  # "a b/…" < "a-b/…" < "a.png" < "a/…" < "ab/…": as strings, not as folders
    assert listed == list(store.list_info())


def test_compact_keys_give_back_every_key() -> None:
    from components.data.sources import Keys

    keys = Keys()
    for key in ["a/1.png", "blåbær/2.jpg", "", "x" * 300]:
        keys.append(key)
    assert list(keys) == ["a/1.png", "blåbær/2.jpg", "", "x" * 300] and len(keys) == 4 and keys[-1] == "x" * 300
    with pytest.raises(IndexError):
        keys[4]
    keys.close()


def test_compact_keys_spilled_to_their_file_read_back_from_many_threads() -> None:
    """Past the flush size the keys live in the temporary file; reads race each other as prepare's threads do."""
    from concurrent.futures import ThreadPoolExecutor

    from components.data.sources import Keys

    expected = [f"class-{i % 7}/{'é' * (i % 5)}{i:07d}.jpg" for i in range(20_000)]  # ~0.5 MB: several flushes
    keys = Keys()
    for key in expected:
        keys.append(key)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(keys.__getitem__, range(len(expected) - 1, -1, -1)))
    assert got[::-1] == expected
    keys.close()


def test_store_opened_on_a_prefix_sees_only_its_own_keys(store_uri: str, tmp_path: Path) -> None:
    parent = open_store(store_uri)
    child = open_store(store_uri.rstrip("/") + "/runs/7")
    child.write_bytes("model.json", b"{}")
    assert parent.list() == ["runs/7/model.json"]
    assert child.list() == ["model.json"]
    assert child.download_prefix("", tmp_path / "out") == [tmp_path / "out" / "model.json"]


def test_download_prefix_keeps_relative_paths(store_uri: str, tmp_path: Path) -> None:
    store = open_store(store_uri)
    store.write_bytes("m/v/model.json", b"card")
    store.write_bytes("m/v/sub/extra.txt", b"extra")
    paths = store.download_prefix("m/v", tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in paths) == ["model.json", "sub/extra.txt"]
    assert (tmp_path / "dest" / "sub" / "extra.txt").read_bytes() == b"extra"


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", "a/./b", ""])
def test_unsafe_keys_are_rejected(store_uri: str, key: str) -> None:
    store = open_store(store_uri)
    with pytest.raises(StoreError, match="expected a relative key"):
        store.write_bytes(key, b"x")


def test_create_exclusive_lets_exactly_one_of_many_racing_writers_win(store_uri: str) -> None:
    store = open_store(store_uri)
    payloads = [f"writer {i}".encode() for i in range(6)]
    results = run_together(*[lambda p=p: store.create_exclusive("claims/1.json", p) for p in payloads])
    assert results.count(True) == 1 and results.count(False) == len(payloads) - 1
    assert store.read_bytes("claims/1.json") == payloads[results.index(True)]
    assert store.create_exclusive("claims/1.json", b"late") is False


def test_write_if_match_is_create_only_without_etag_and_compare_and_swap_with_one(store_uri: str) -> None:
    store = open_store(store_uri)
    first = store.write_if_match("ptr.json", b"v1", None)
    with pytest.raises(ConflictError, match="changed since it was read"):
        store.write_if_match("ptr.json", b"other", None)
    second = store.write_if_match("ptr.json", b"v2", first)
    with pytest.raises(ConflictError, match="changed since it was read"):
        store.write_if_match("ptr.json", b"stale", first)
    assert store.read_with_etag("ptr.json") == (b"v2", second)


def test_of_two_racing_compare_and_swaps_one_loses_with_conflict(store_uri: str) -> None:
    store = open_store(store_uri)
    etag = store.write_if_match("ptr.json", b"v1", None)
    results = run_together(
        lambda: store.write_if_match("ptr.json", b"from A", etag),
        lambda: store.write_if_match("ptr.json", b"from B", etag),
    )
    losers = [r for r in results if isinstance(r, ConflictError)]
    winners = [i for i, r in enumerate(results) if isinstance(r, str)]
    assert len(losers) == 1 and len(winners) == 1
    assert store.read_bytes("ptr.json") == [b"from A", b"from B"][winners[0]]


# -- Blob only: integrity, URIs, retries, secrets -------------------------------------------------


def raw_blob(azurite: Azurite, store: BlobStore, key: str):
    """The SDK's own client for ``key`` in ``store``: to change a blob behind the store's back."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    name = f"{store.location.prefix}/{key}" if store.location.prefix else key
    return service.get_blob_client(store.location.container, name)


@pytest.fixture
def blob_store(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> BlobStore:
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    return BlobStore.from_uri(azurite.new_container("pfx"))


def test_blob_changed_behind_the_stores_back_is_detected_on_every_read(azurite: Azurite, blob_store: BlobStore, tmp_path: Path) -> None:
    blob_store.write_bytes("models/m/weights.bin", b"original weights")
    raw = raw_blob(azurite, blob_store, "models/m/weights.bin")
    kept_metadata = raw.get_blob_properties().metadata
    raw.upload_blob(b"tampered weights", overwrite=True, metadata=kept_metadata)
    target = tmp_path / "weights.bin"
    for read in (lambda: blob_store.read_bytes("models/m/weights.bin"),
                 lambda: blob_store.read_with_etag("models/m/weights.bin"),
                 lambda: blob_store.download_file("models/m/weights.bin", target)):
        with pytest.raises(StoreError, match=r"blob 'pfx/models/m/weights.bin' .* was recorded at upload: it was modified"):
            read()
    assert not target.exists() and os.listdir(tmp_path) == []  # a failed check leaves no file behind


def test_blob_without_a_recorded_hash_is_refused(azurite: Azurite, blob_store: BlobStore) -> None:
    raw_blob(azurite, blob_store, "raw/upload.bin").upload_blob(b"written by another tool")
    with pytest.raises(StoreError, match=r"'pfx/raw/upload.bin' .* to carry the SHA-256 recorded at upload"):
        blob_store.read_bytes("raw/upload.bin")


def test_large_blob_tampered_in_one_block_fails_its_download(azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    store = BlobStore.from_uri(azurite.new_container(), BlobSettings(upload_block_size=1 << 20))
    write_random_file(tmp_path / "big.bin", 3)
    store.upload_file("big.bin", tmp_path / "big.bin")  # three staged blocks, committed with one hash
    raw = raw_blob(azurite, store, "big.bin")
    block_ids = [b.id for b in raw.get_block_list("committed")[0]]
    raw.stage_block(block_ids[1], os.urandom(1 << 20))
    raw.commit_block_list(block_ids, metadata=raw.get_blob_properties().metadata)
    with pytest.raises(StoreError, match="it was modified or corrupted"):
        store.download_file("big.bin", tmp_path / "copy.bin")


def test_azure_uri_opens_with_default_credential_and_canonical_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONNECTION_STRING_ENV, raising=False)
    store = open_store("https://myaccount.blob.core.windows.net/models/team-a/")
    assert isinstance(store, BlobStore)
    assert store.uri == "https://myaccount.blob.core.windows.net/models/team-a"
    assert (store.location.container, store.location.prefix, store.location.uses_connection_string) == ("models", "team-a", False)


def test_azurite_uri_is_matched_to_the_connection_string_endpoint() -> None:
    endpoint = "http://127.0.0.1:10000/devstoreaccount1"
    location = parse_blob_uri("http://127.0.0.1:10000/devstoreaccount1/data/raw/mnist", endpoint)
    assert (location.endpoint, location.container, location.prefix) == (endpoint, "data", "raw/mnist")
    assert location.uses_connection_string


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://bucket/data", "got a URI with scheme 's3'"),
        ("https://example.com/container/x", "AZURE_STORAGE_CONNECTION_STRING is not set; got https://example.com/container/x"),
        ("http://127.0.0.1:10000/devstoreaccount1/c1x", "AZURE_STORAGE_CONNECTION_STRING is not set"),
        ("http://myaccount.blob.core.windows.net/data", "expected https://ACCOUNT.blob.core.windows.net"),
        ("https://myaccount.blob.core.windows.net/", "expected a container name .* got ''"),
        ("https://myaccount.blob.core.windows.net/Bad_Name/x", "expected a container name .* got 'Bad_Name'"),
        ("https://myaccount.blob.core.windows.net/data/a/../b", "expected a relative key"),
        ("https://myaccount.blob.core.windows.net/data?sv=2024&sig=SECRETSIG", "without user, query string or fragment"),
        ("https://user:SECRETPW@myaccount.blob.core.windows.net/data", "without user, query string or fragment"),
        ("http://127.0.0.1:port/devstoreaccount1/data", "expected a host and an optional numeric port"),
    ],
)
def test_bad_blob_uris_are_rejected_saying_what_was_expected(uri: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONNECTION_STRING_ENV, raising=False)
    with pytest.raises(StoreError, match=message) as raised:
        open_store(uri)
    assert "SECRET" not in str(raised.value)


def test_uri_outside_the_connection_strings_endpoint_names_that_endpoint(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    with pytest.raises(StoreError, match=f"is set, for endpoint {azurite.endpoint}; got http://127.0.0.1:1/other/c1x") as raised:
        open_store("http://127.0.0.1:1/other/c1x")
    assert azurite.account_key not in str(raised.value)


def test_malformed_connection_string_is_rejected_without_quoting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, "AccountKey=SECRETKEY;nonsense")
    with pytest.raises(StoreError, match="found one that does not parse") as raised:
        open_store("http://127.0.0.1:10000/devstoreaccount1/data")
    assert "SECRETKEY" not in str(raised.value)


def test_missing_container_is_named_in_the_error(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    store = open_store(azurite.store_uri("never-created"))
    with pytest.raises(StoreError, match="expected container 'never-created' .* found none"):
        store.read_bytes("x.json")


def test_transient_server_errors_are_retried_with_backoff(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    uri = azurite.new_container()
    upstream = azurite.endpoint.rsplit("/", 1)[0]
    with flaky_proxy(upstream) as (port, faults):
        proxied = uri.replace(upstream, f"http://127.0.0.1:{port}")
        environ = {CONNECTION_STRING_ENV: azurite.connection_string.replace(upstream, f"http://127.0.0.1:{port}")}
        store = BlobStore.from_uri(proxied, FAST_RETRIES, environ)
        faults.busy = 2
        store.write_bytes("retried.json", b"made it")
        assert faults.seen == ["PUT busy", "PUT busy", "PUT forward"]
        faults.busy = 10
        with pytest.raises(StoreError, match="HTTP 503 ServerBusy"):
            store.read_bytes("retried.json")
        assert faults.seen[3:] == ["GET busy"] * 4  # the first try and three retries, then it gives up
    assert open_store(uri).read_bytes("retried.json") == b"made it"


def test_conditional_write_whose_response_was_lost_is_recognised_as_its_own(azurite: Azurite) -> None:
    uri = azurite.new_container()
    upstream = azurite.endpoint.rsplit("/", 1)[0]
    with flaky_proxy(upstream) as (port, faults):
        environ = {CONNECTION_STRING_ENV: azurite.connection_string.replace(upstream, f"http://127.0.0.1:{port}")}
        store = BlobStore.from_uri(uri.replace(upstream, f"http://127.0.0.1:{port}"), FAST_RETRIES, environ)
        faults.drop = 1
        assert store.create_exclusive("claim.json", b"mine") is True  # the retry meets 409: the blob is its own
        assert faults.seen[:2] == ["PUT drop", "PUT forward"]
        faults.drop = 1
        etag = store.write_if_match("ptr.json", b"v1", None)
        assert store.read_with_etag("ptr.json") == (b"v1", etag)
        assert store.create_exclusive("claim.json", b"someone else") is False


def test_account_key_never_appears_in_logs_uris_or_errors(azurite: Azurite, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.connection_string)
    caplog.set_level(logging.DEBUG)
    store = open_store(azurite.new_container())
    store.write_bytes("a.json", b"{}")
    store.read_bytes("a.json")
    messages = [store.uri, repr(store)]
    for failing in (lambda: store.read_bytes("missing.json"), lambda: store.write_if_match("a.json", b"x", None)):
        with pytest.raises(StoreError) as raised:
            failing()
        messages.append(str(raised.value))
    assert caplog.records, "expected the SDK to log its requests at DEBUG"
    assert azurite.account_key not in caplog.text
    assert not any(azurite.account_key in m for m in messages)


def test_local_store_is_what_paths_and_file_uris_open(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    store: Store = open_store(f"file://{tmp_path}/sub")
    assert isinstance(store, LocalStore) and store.uri == str(tmp_path / "sub")
