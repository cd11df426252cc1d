"""Put a raw data set into a store, where the pipeline's ``data_uri`` can name it.

In Azure Blob every object the store writes carries its SHA-256 (blob metadata) and every read checks
it, so raw data must go in through the store: files uploaded with the portal or azcopy are refused by
``prepare_data``. :func:`put_folder` is that way in. Before it writes anything it checks the data set
as ``prepare_data`` will see it: the layout and labels from the listing (and the IDX files whole, with
the inflation cap), and every image file's size and header — format, sides and pixel count — read in
parallel without decoding pixels. So a folder with a file that is no image, a decompression bomb, an
empty file or a symlink is refused, naming the file, with nothing uploaded; files whose pixels turn
out damaged are for ``prepare_data``'s ``max_unreadable`` policy. It refuses a destination holding
files that are not part of this data set, because a data set is everything under its prefix and two
mixed ones would train silently. Files then go up on a bounded pool of threads (tens in flight).
Putting the same folder twice rewrites the same files, so an interrupted put is finished by running
it again.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.data.sample import write_sample
from components.data.sources import RawSource, check_file_size, open_source
from components.errors import DataError
from components.imagefile import ImageDecodeError, read_header
from components.parallel import bounded_map
from components.presets import channels_of_mode
from components.store import LocalStore, Store, open_store

UPLOADS_IN_FLIGHT = 16


@dataclass(frozen=True)
class PutResult:
    """What was put where, and what the checks saw in it."""

    uri: str
    files: int
    bytes: int
    source_format: str
    examples: int
    image_shape: tuple[int, ...] | None  # None: the images differ in size (prepare them with image_size=S)
    classes: int

    def describe(self) -> str:
        shape = "x".join(map(str, self.image_shape)) if self.image_shape else "of mixed sizes (prepare with image_size=S)"
        return (f"put {self.files} files ({self.bytes / 2**20:.1f} MiB) to {self.uri}: {self.source_format}, "
                f"{self.examples} images {shape}, {self.classes} classes")


def put_folder(source: Path, uri: str, workers: int = UPLOADS_IN_FLIGHT) -> PutResult:
    """Check the data set in ``source`` (MNIST IDX files or an ImageFolder tree) and upload its files
    to ``uri``, keeping their relative paths. Hidden files (``.DS_Store``…) stay behind."""
    if not source.is_dir():
        raise DataError(f"expected a folder holding MNIST IDX files or an ImageFolder tree, found {'a file' if source.exists() else 'nothing'} at {source}")
    files = _files(source)
    raw = open_source(_Subset(source, files))  # raises DataError naming the bad file; nothing is written yet
    try:
        shape = _check_images(raw, workers)
    finally:
        raw.close()
    store = open_store(uri)
    _check_destination(store, uri, set(files))
    for _ in bounded_map(lambda item: store.upload_file(*item), files.items(), workers):
        pass
    return PutResult(uri, len(files), sum(p.stat().st_size for p in files.values()), raw.source_format, len(raw),
                     shape, len(raw.class_names))


def put_sample(uri: str) -> PutResult:
    """Put the bundled digits sample (what ``make run`` trains on) at ``uri``."""
    with tempfile.TemporaryDirectory(prefix="sample-") as folder:
        write_sample(folder)
        return put_folder(Path(folder), uri)


def _files(source: Path) -> dict[str, Path]:
    """The files to upload, by key; a symlink is refused (it could carry a file from outside the folder)."""
    files = {}
    for folder, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(folder, name)
            if path.is_symlink():
                raise DataError(f"{path.relative_to(source)}: expected regular files only, found a symlink to {os.readlink(path)}; "
                                "copy the file into the folder instead")
            files[path.relative_to(source).as_posix()] = path
    for folder, dirs, _ in os.walk(source):
        linked = [d for d in dirs if Path(folder, d).is_symlink()]
        if linked:
            raise DataError(f"{Path(folder, linked[0]).relative_to(source)}: expected folders, found a symlink")
    return files


def _check_images(raw: RawSource, workers: int) -> tuple[int, ...] | None:
    """Every image file's size and header (no pixels decoded); the common shape, or ``None`` when mixed."""
    if raw.source_format == "mnist-idx":
        return tuple(raw.geometry(0).shape)
    shapes = set()
    for header in bounded_map(lambda i: _header(raw, i), range(len(raw)), workers):
        shapes.add((channels_of_mode(header.mode), header.height, header.width))
    return shapes.pop() if len(shapes) == 1 else None


def _header(raw: RawSource, index: int):
    key = raw.keys[index]
    check_file_size(key, raw.sizes[index])
    try:
        image, header = read_header(raw.store.read_bytes(key))
    except ImageDecodeError as exc:
        raise DataError(f"{key}: {exc}") from None
    image.close()
    return header


def _check_destination(store: Store, uri: str, keys: set[str]) -> None:
    store.ensure_root()
    others = sorted(set(store.list()) - keys)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise DataError(f"expected {uri} to be empty or to hold this same data set, found other files: {shown}. "
                        "Delete them or choose another prefix: a data set is every file under its prefix.")


class _Subset(LocalStore):
    """The source folder as the checks see it: only the files that will be uploaded."""

    def __init__(self, root: Path, files: dict[str, Path]):
        super().__init__(root)
        self._files = files

    def iter_info(self, prefix: str = ""):
        return ((key, info) for key, info in super().iter_info(prefix) if key in self._files)
