"""Put a raw data set into a store, where the pipeline's ``data_uri`` can name it.

In Azure Blob every object the store writes carries its SHA-256 (blob metadata) and every read checks
it, so raw data must go in through the store: files uploaded with the portal or azcopy are refused by
``prepare_data``. :func:`put_folder` is that way in. It reads the whole data set with the loader
``prepare_data`` uses before it writes anything, so a bad file is reported with nothing uploaded; and it
refuses a destination holding files that are not part of this data set, because a data set is
everything under its prefix and two mixed ones would train silently. Putting the same folder twice
rewrites the same files, so an interrupted put is finished by running it again.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.data.sample import write_sample
from components.data.sources import load_raw
from components.errors import DataError
from components.store import LocalStore, Store, open_store


@dataclass(frozen=True)
class PutResult:
    """What was put where, and what the loader saw in it."""

    uri: str
    files: int
    bytes: int
    source_format: str
    examples: int
    image_shape: tuple[int, ...]
    classes: int

    def describe(self) -> str:
        shape = "x".join(map(str, self.image_shape))
        return (f"put {self.files} files ({self.bytes / 2**20:.1f} MiB) to {self.uri}: {self.source_format}, "
                f"{self.examples} images {shape}, {self.classes} classes")


def put_folder(source: Path, uri: str) -> PutResult:
    """Validate the data set in ``source`` (MNIST IDX files or an ImageFolder tree) and upload its files
    to ``uri``, keeping their relative paths. Hidden files (``.DS_Store``…) stay behind."""
    if not source.is_dir():
        raise DataError(f"expected a folder holding MNIST IDX files or an ImageFolder tree, found {'a file' if source.exists() else 'nothing'} at {source}")
    files = {path.relative_to(source).as_posix(): path for path in sorted(source.rglob("*")) if path.is_file() and not _hidden(path, source)}
    raw = load_raw(_Subset(source, files))  # raises DataError naming the bad file; nothing is written yet
    store = open_store(uri)
    _check_destination(store, uri, set(files))
    for key, path in files.items():
        store.upload_file(key, path)
    return PutResult(uri, len(files), sum(p.stat().st_size for p in files.values()), raw.source_format, len(raw.labels),
                     tuple(raw.images.shape[1:]), len(raw.class_names))


def put_sample(uri: str) -> PutResult:
    """Put the bundled digits sample (what ``make run`` trains on) at ``uri``."""
    with tempfile.TemporaryDirectory(prefix="sample-") as folder:
        write_sample(folder)
        return put_folder(Path(folder), uri)


def _check_destination(store: Store, uri: str, keys: set[str]) -> None:
    store.ensure_root()
    others = sorted(set(store.list()) - keys)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise DataError(f"expected {uri} to be empty or to hold this same data set, found other files: {shown}. "
                        "Delete them or choose another prefix: a data set is every file under its prefix.")


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


class _Subset(LocalStore):
    """The source folder as the loader sees it: only the files that will be uploaded."""

    def __init__(self, root: Path, files: dict[str, Path]):
        super().__init__(root)
        self._keys = sorted(files)

    def list(self, prefix: str = "") -> list[str]:
        return [key for key in self._keys if key.startswith(prefix)]
