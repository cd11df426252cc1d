"""Raw data sets in a store: MNIST IDX files or an ImageFolder tree, detected from one listing.

- MNIST IDX: ``PREFIX-images-idx3-ubyte[.gz]`` with a matching ``PREFIX-labels-idx1-ubyte[.gz]``
  (e.g. ``train-…`` and ``t10k-…``); every pair found is pooled, and the pipeline splits it itself.
  Classes are the digits ``0``–``9``. Image files are inflated (with a cap) into a local scratch file
  and read from there, so memory holds one image at a time, not the file.
- ImageFolder: ``<class>/<image>.png|jpg|jpeg|webp`` in any size and mode; classes are the folder
  names, sorted (any Unicode name, spaces included). The listing alone gives every label, so the
  split is decided before one image is read, and images are then read in parallel, in split order.

:func:`open_source` reads only the listing (and, for IDX, the small label files). Nothing here keeps
the images: a :class:`RawSource` hands out one raw example at a time (:meth:`RawSource.fetch`), which
:mod:`components.data.decode` decodes.
Every problem with the data set as a whole raises :class:`DataError`; a problem with one file
raises :class:`UnreadableFile`, which preparation fails on or skips, as its policy says.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from components.data import idx
from components.errors import DataError
from components.imagefile import SUFFIXES, Header, ImageDecodeError, read_header
from components.presets import channels_of_mode
from components.store import LocalStore, ObjectInfo, Store

IDX_IMAGES = re.compile(r"^(?P<prefix>.+)-images-idx3-ubyte(?P<gz>\.gz)?$")
MNIST_CLASSES = [str(d) for d in range(10)]
MAX_FILE_BYTES = 256 * 2**20  # no image file a classifier trains on is bigger; a bigger one is refused unread
SAMPLE_FILES = 32  # images whose headers decide the channel count and whether sizes are uniform


class UnreadableFile(DataError):
    """One raw file cannot be used (empty, too big, not an image, truncated…); ``key`` names it."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason

    def __reduce__(self):  # it crosses from the decode processes (components.data.decode)
        return type(self), (self.key, self.reason)


@dataclass(frozen=True)
class Payload:
    """One raw example as read from the store, not yet decoded (it is sent to a decode process)."""

    index: int
    label: int
    key: str  # where it came from, for messages
    data: bytes | np.ndarray | None  # the encoded image file, an IDX image's uint8 [H, W] pixels, or None:
    path: str | None = None  # a local file, read by whoever decodes it


@dataclass(frozen=True)
class Example:
    """One decoded image: ``pixels`` is ``uint8 [C,H,W]`` at the prepared size."""

    index: int
    label: int
    pixels: np.ndarray
    width: int  # as stored in the raw file
    height: int


@dataclass(frozen=True)
class Geometry:
    """What every prepared image becomes: ``channels × height × width``; ``resized`` when fitted to a size."""

    channels: int
    height: int
    width: int
    resized: bool

    @property
    def shape(self) -> list[int]:
        return [self.channels, self.height, self.width]


@dataclass
class RawSource:
    """A listed raw data set: labels for every example, and a way to read one example."""

    store: Store
    source_format: str
    class_names: list[str]
    labels: np.ndarray  # int64 [N]
    fingerprint: str  # SHA-256 of (key, size, version) of every file read, in key order
    keys: Keys = field(default_factory=lambda: Keys())  # ImageFolder: the file of each example
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ImageFolder: each file's listed size
    _idx: list[_IdxFile] = field(default_factory=list)
    _scratch: tempfile.TemporaryDirectory | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def close(self) -> None:
        self.keys.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    def name(self, index: int) -> str:
        """How a person finds example ``index``: its file, and for IDX its position in the file."""
        if self.source_format == "mnist-idx":
            file = self._idx_file(index)
            return f"{file.images_key}[{index - file.start}]"
        return self.keys[index]

    def geometry(self, image_size: int) -> Geometry:
        """The prepared image shape: native when ``image_size`` is 0 (the data must be uniform), else S×S."""
        if self.source_format == "mnist-idx":
            h, w = self._idx[0].shape[1:]
            return Geometry(1, image_size or h, image_size or w, bool(image_size) and (h, w) != (image_size, image_size))
        headers = [(self.keys[i], h) for i in _spread(len(self.keys), SAMPLE_FILES) if (h := self._header(i)) is not None]
        if not headers:
            raise DataError(f"{self.store.uri}: expected readable images, found none among {SAMPLE_FILES} sampled files")
        channels = 3 if any(channels_of_mode(h.mode) == 3 for _, h in headers) else 1
        if image_size:
            return Geometry(channels, image_size, image_size, True)
        sizes = {(h.width, h.height): key for key, h in headers}
        if len(sizes) > 1:
            (w1, h1), k1 = next(iter(sizes.items()))
            (w2, h2), k2 = list(sizes.items())[1]
            raise DataError(f"expected images of one size when image_size is 0 (native size), found {k1} {w1}x{h1} and "
                            f"{k2} {w2}x{h2}: set image_size=S to resize and center-crop every image to SxS")
        (w, h), _ = next(iter(sizes.items()))
        return Geometry(channels, h, w, False)

    def fetch(self, index: int) -> Payload | UnreadableFile:
        """Read example ``index`` (not decoded: :func:`components.data.decode.decode` does that), or the
        reason its file is unreadable."""
        label = int(self.labels[index])
        if self.source_format == "mnist-idx":
            file = self._idx_file(index)
            return Payload(index, label, self.name(index), np.array(file.images[index - file.start]))
        key = self.keys[index]
        try:
            check_file_size(key, int(self.sizes[index]))
        except UnreadableFile as exc:
            return exc
        if self.in_place:  # the decoder reads the file: the path is all that crosses to its process
            return Payload(index, label, key, None, f"{self.store.root}/{key}")
        return Payload(index, label, key, self.store.read_bytes(key))

    @property
    def in_place(self) -> bool:
        """Whether the image files are on this machine: read by whoever decodes them, not fetched on threads."""
        return self.source_format == "imagefolder" and isinstance(self.store, LocalStore)

    def _idx_file(self, index: int) -> _IdxFile:
        return next(f for f in self._idx if f.start <= index < f.start + len(f.labels))

    def _header(self, index: int) -> Header | None:
        """The header of one file, or ``None`` when it is unreadable (the main pass reports it)."""
        key = self.keys[index]
        try:
            check_file_size(key, int(self.sizes[index]))
            image, header = read_header(self.store.read_bytes(key))
        except (UnreadableFile, ImageDecodeError):
            return None
        image.close()
        return header

@dataclass
class _IdxFile:
    images_key: str
    labels: np.ndarray
    images: np.ndarray  # a read-only memory map of the inflated images, [n, H, W]
    start: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.images.shape


class Keys(Sequence[str]):
    """Many keys in little memory. Their UTF-8 bytes go end to end into an unnamed temporary file (gone
    when closed, or when the process ends however it ends) and only where each key ends stays in memory:
    8 bytes a key, where a list of str costs over 100 and the listing's dict several hundred. A key is read
    back with one ``pread``, right before the file it names is read, so the lookup costs nothing that shows.
    Appends come from one thread (the listing); reads may come from many."""

    _FLUSH_BYTES = 1 << 16

    def __init__(self) -> None:
        self._ends = array("q")
        self._pending, self._written = bytearray(), 0  # bytes not yet in the file; bytes that are
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()

    def append(self, key: str) -> None:
        self._pending += key.encode()
        self._ends.append(self._written + len(self._pending))
        if len(self._pending) >= self._FLUSH_BYTES:
            self._flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        index = index + len(self) if index < 0 else index
        if not 0 <= index < len(self):
            raise IndexError(f"key {index} of {len(self)}")
        if self._pending:
            self._flush()
        start = self._ends[index - 1] if index > 0 else 0
        return os.pread(self._fileno(), self._ends[index] - start, start).decode() if self._ends[index] > start else ""

    def _fileno(self) -> int:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="keys-")
        return self._file.fileno()

    def _flush(self) -> None:
        with self._lock:
            view = memoryview(self._pending)
            while view:
                done = os.pwrite(self._fileno(), view, self._written)
                self._written += done
                view = view[done:]
            view.release()
            self._pending.clear()


@dataclass
class _Listing:
    """One pass over a store's listing, keeping only what a raw data set needs (the files are many)."""

    images: Keys = field(default_factory=Keys)
    sizes: array = field(default_factory=lambda: array("q"))
    classes: array = field(default_factory=lambda: array("I"))  # per image: its folder's id in ``folders``
    folders: dict[str, int] = field(default_factory=dict)
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)  # of the image files' (key, size, version)
    idx: dict[str, ObjectInfo] = field(default_factory=dict)  # IDX image and label files (a few)
    others: list[str] = field(default_factory=list)  # the first few other keys, for messages
    loose: str | None = None  # an image outside any class folder

    def add(self, key: str, info: ObjectInfo) -> None:
        if key.lower().endswith(SUFFIXES):
            if "/" not in key:
                self.loose = self.loose or key
                return
            self.images.append(key)
            self.sizes.append(info.size)
            self.classes.append(self.folders.setdefault(key.split("/")[-2], len(self.folders)))
            # NUL cannot occur in a key or a version: the fields stay apart without escaping (json costs 10x).
            self.digest.update(f"{key}\0{info.size}\0{info.version}\0".encode())
        elif "-idx" in key.rsplit("/", 1)[-1]:
            self.idx[key] = info
        elif len(self.others) < 5:
            self.others.append(key)


def open_source(store: Store) -> RawSource:
    """List ``store``, detect its layout and check it as a whole (nothing is decoded yet).

    The listing is streamed, in key order, into compact arrays: memory grows by about 30 bytes per file (the keys themselves go to a temporary file)."""
    listing = _Listing()
    for key, info in store.iter_info():
        listing.add(key, info)
    if any(IDX_IMAGES.match(k.rsplit("/", 1)[-1]) for k in listing.idx):
        return _open_mnist(store, listing.idx)
    if listing.images or listing.loose:
        return _open_image_folder(store, listing)
    found = (list(listing.idx) + listing.others)[:5]
    if not found:
        raise DataError(f"no files in {store.uri}: expected MNIST IDX files or an ImageFolder tree (<class>/<image>.png)")
    raise DataError(
        f"{store.uri}: expected MNIST IDX files (train-images-idx3-ubyte[.gz] …) or an ImageFolder tree "
        f"(<class>/<image>.png|jpg|webp), found {found}{' …' if len(found) >= 5 else ''}"
    )


def check_file_size(key: str, size: int) -> None:
    """Refuse an image file by its listed size, before reading a byte of it."""
    if size == 0:
        raise UnreadableFile(key, "expected a PNG, JPEG or WebP image, found an empty (0-byte) file")
    if size > MAX_FILE_BYTES:
        raise UnreadableFile(key, f"expected an image file of at most {MAX_FILE_BYTES // 2**20} MiB, found {size / 2**20:.0f} MiB")


def _open_image_folder(store: Store, listing: _Listing) -> RawSource:
    if listing.loose is not None:
        raise DataError(f"{listing.loose}: expected images inside class folders (<class>/<image>.png), found one at the top level")
    class_names = sorted(listing.folders)
    if len(class_names) < 2:
        raise DataError(f"{store.uri}: expected at least 2 class folders (a classifier needs two classes), found {class_names}")
    # Folder ids in the order first listed -> labels in the order of the sorted class names.
    relabel = np.zeros(len(class_names), dtype=np.int64)
    for name, folder in listing.folders.items():
        relabel[folder] = class_names.index(name)
    labels = relabel[np.frombuffer(listing.classes, dtype=np.dtype(listing.classes.typecode))]
    return RawSource(store, "imagefolder", class_names, labels, listing.digest.hexdigest(), listing.images,
                     np.frombuffer(listing.sizes, dtype=np.int64))


def _open_mnist(store: Store, listing: dict[str, ObjectInfo]) -> RawSource:
    scratch = tempfile.TemporaryDirectory(prefix="idx-")
    try:
        files, start = [], 0
        for key in sorted(listing):
            match = IDX_IMAGES.match(key.rsplit("/", 1)[-1])
            if match:
                files.append(_open_idx_pair(store, key, _matching_labels(key, match, listing), start, Path(scratch.name)))
                start += len(files[-1].labels)
        _check_same_size(files)
    except BaseException:
        scratch.cleanup()
        raise
    labels = np.concatenate([f.labels for f in files]).astype(np.int64)
    used = {k for f in files for k in (f.images_key, _label_key_of(f, listing))}
    fingerprint = hashlib.sha256(json.dumps([(k, listing[k].size, listing[k].version) for k in sorted(used)]).encode())
    return RawSource(store, "mnist-idx", list(MNIST_CLASSES), labels, fingerprint.hexdigest(), _idx=files, _scratch=scratch)


def _label_key_of(file: _IdxFile, listing: dict[str, ObjectInfo]) -> str:
    match = IDX_IMAGES.match(file.images_key.rsplit("/", 1)[-1])
    return _matching_labels(file.images_key, match, listing)


def _open_idx_pair(store: Store, images_key: str, labels_key: str, start: int, scratch: Path) -> _IdxFile:
    labels = _inflate(store, labels_key, 1, scratch)
    images = _inflate(store, images_key, 3, scratch)
    if len(images) != len(labels):
        raise DataError(f"{images_key} has {len(images)} images but {labels_key} has {len(labels)} labels")
    if len(labels) and labels.max() >= len(MNIST_CLASSES):
        bad = int(np.argmax(labels >= len(MNIST_CLASSES)))
        raise DataError(f"{labels_key}: label {int(labels[bad])} at index {bad} is outside the class range 0–9")
    return _IdxFile(images_key, np.array(labels), images, start)


def _inflate(store: Store, key: str, ndim: int, scratch: Path) -> np.ndarray:
    """The IDX file ``key`` inflated into ``scratch`` and memory-mapped (read-only)."""
    source = store.local_path(key)
    if source is None:
        source = scratch / f"download-{abs(hash(key))}"
        store.download_file(key, source)
    target = scratch / f"inflated-{abs(hash(key))}"
    with idx.open_payload(source, key) as stream, open(target, "wb") as out:
        shape = idx.read_header(stream, key, ndim)
        idx.copy_payload(stream, out, shape, key)
    if source.parent == scratch:
        source.unlink()
    if 0 in shape:
        return np.zeros(shape, dtype=np.uint8)
    return np.memmap(target, dtype=np.uint8, mode="r", shape=shape)


def _matching_labels(image_key: str, match: re.Match, listing) -> str:
    folder = image_key[: -len(match.group(0))]
    for suffix in (".gz", ""):
        candidate = f"{folder}{match.group('prefix')}-labels-idx1-ubyte{suffix}"
        if candidate in listing:
            return candidate
    raise DataError(f"{image_key} has no labels file: expected {folder}{match.group('prefix')}-labels-idx1-ubyte[.gz]")


def _check_same_size(files: list[_IdxFile]) -> None:
    first = files[0]
    for file in files:
        if file.shape[1:] != first.shape[1:]:
            raise DataError(f"{file.images_key}: expected {first.shape[1]}x{first.shape[2]} images like {first.images_key}, "
                            f"found {file.shape[1]}x{file.shape[2]}")


def _spread(length: int, count: int) -> list[int]:
    """Up to ``count`` indices spread evenly over ``range(length)`` (deterministic)."""
    if length <= count:
        return list(range(length))
    return [int(i * length / count) for i in range(count)]
