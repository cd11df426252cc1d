"""What a local run checks before its first step, so that a mistake found only after training is found in seconds.

Each check reuses the code that would fail later, so the message is the one the step would have given: the
prepare step's listing and layout check (``components.data.sources.open_source``), a write to the store as
every step makes, and the deploy step's port check (``components.deploy.local.check_port_free``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.data.sources import open_source
from components.deploy.local import check_port_free
from components.errors import StoreError
from components.store import Store, join_key, open_store

PROBE_PREFIX = "preflight"  # the store key folder of the write probe (deleted again at once)


def preflight(params: Mapping[str, Any], store: Store) -> str:
    """Check the run's data, store and (for a local deploy) serving port; return what was found, in one line.

    ``params`` are the run's full pipeline arguments (defaults included); raises the project's errors."""
    found = [check_data(params["data_uri"]), check_store_writable(store)]
    if params["deploy_target"] == "local":
        port = int(params["serving_port"])
        check_port_free(port, Path(params["local_state_dir"]))
        found.append(f"port {port} free")
    return ", ".join(found)


def check_data(data_uri: str) -> str:
    """List ``data_uri`` and check its layout as the prepare step does (nothing is decoded)."""
    source = open_source(open_store(data_uri))
    try:
        return f"{len(source)} images in {len(source.class_names)} classes ({source.source_format})"
    finally:
        source.close()


def check_store_writable(store: Store) -> str:
    """Write and delete one empty object in ``store``."""
    key = join_key(PROBE_PREFIX, f"write-check-{uuid.uuid4().hex}")
    try:
        store.write_bytes(key, b"")
        store.delete(key)
    except OSError as exc:  # a local folder; the Blob store raises StoreError with the service's reason itself
        raise StoreError(f"expected a store this user can write to at {store.uri}, got: {exc.strerror or exc}"
                         f"{f' ({exc.filename})' if exc.filename else ''}") from None
    return "store writable"
