"""Checkpoints in the store: one folder per step, complete only once its commit record exists.

Layout under :attr:`TrainConfig.checkpoint_key`::

    step-00000040/ps0.pt        shard 0: flat parameters, optimizer and LR-schedule state, update count
    step-00000040/ps1.pt        …one file per parameter-server shard
    step-00000040/worker0.pt    worker 0: BatchNorm buffers, running epoch totals, history, best weights
    step-00000040/COMMIT.json   written last: the step, the job's shape, and the SHA-256 of every file

Every object is written atomically by the store, and the commit record only after every other file of
its folder, so a folder without ``COMMIT.json`` (a rank died while writing) is ignored: a relaunched
job resumes from the newest folder that has one. The files are ``torch.save`` archives of tensors and
plain values, read back with ``torch.load(weights_only=True)``: nothing is ever unpickled.

The data position needs no file of its own: every worker's batches are a pure function of the seed,
the epoch and the step (see :mod:`components.training.worker`), so the step is the position.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch

from components.errors import TrainingError
from components.store import Store, join_key

COMMIT_FILE = "COMMIT.json"
WORKER_FILE = "worker0.pt"
KEEP = 2  # committed checkpoints kept; older folders are deleted after each commit
_FOLDER = re.compile(r"^step-(\d{8})$")

# The parts of the configuration a checkpoint cannot be resumed under if they changed.
SHAPE_FIELDS = ("arch", "num_ps", "num_workers", "batch_size", "mode", "epochs", "seed")


@dataclass(frozen=True)
class Commit:
    """The commit record of one complete checkpoint."""

    step: int
    shape: dict[str, Any]
    files: dict[str, str]  # file name -> SHA-256

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()


def folder(checkpoint_key: str, step: int) -> str:
    return join_key(checkpoint_key, f"step-{step:08d}")


def shard_file(ps_index: int) -> str:
    return f"ps{ps_index}.pt"


def encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def decode(data: bytes) -> dict[str, Any]:
    # weights_only: tensors, containers and plain numbers only; an archive holding anything else fails.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_part(store: Store, checkpoint_key: str, step: int, name: str, state: dict[str, Any]) -> str:
    """Write one rank's part of checkpoint ``step``; return its SHA-256 for the commit record."""
    data = encode(state)
    store.write_bytes(join_key(folder(checkpoint_key, step), name), data)
    return sha256(data)


def commit(store: Store, checkpoint_key: str, record: Commit) -> None:
    """Make checkpoint ``record.step`` complete, then drop all but the newest :data:`KEEP` committed ones."""
    store.write_bytes(join_key(folder(checkpoint_key, record.step), COMMIT_FILE), record.to_json())
    _prune(store, checkpoint_key)


def committed_steps(store: Store, checkpoint_key: str) -> list[int]:
    return sorted(step for key in store.list(checkpoint_key) if key.endswith("/" + COMMIT_FILE)
                  and (step := _step_of(checkpoint_key, key)) is not None)


def _step_of(checkpoint_key: str, key: str) -> int | None:
    match = _FOLDER.match(key[len(checkpoint_key) :].strip("/").split("/")[0])
    return int(match.group(1)) if match else None


def latest(store: Store, checkpoint_key: str, shape: dict[str, Any]) -> Commit | None:
    """The newest complete checkpoint, or ``None``; refuses one written by a job of another shape."""
    steps = committed_steps(store, checkpoint_key)
    if not steps:
        return None
    record = Commit(**json.loads(store.read_bytes(join_key(folder(checkpoint_key, steps[-1]), COMMIT_FILE))))
    changed = {k: (record.shape.get(k), v) for k, v in shape.items() if record.shape.get(k) != v}
    if changed:
        details = ", ".join(f"{k}: checkpoint {old!r}, this job {new!r}" for k, (old, new) in sorted(changed.items()))
        raise TrainingError(f"cannot resume from {folder(checkpoint_key, record.step)}: it was written by a differently shaped job ({details})")
    return record


def read_part(store: Store, checkpoint_key: str, record: Commit, name: str) -> dict[str, Any]:
    """Read one rank's part of a committed checkpoint, checking it against the commit record."""
    key = join_key(folder(checkpoint_key, record.step), name)
    data = store.read_bytes(key)
    if name not in record.files or sha256(data) != record.files[name]:
        raise TrainingError(f"checkpoint file {key} does not match its commit record (expected SHA-256 {record.files.get(name)}, got {sha256(data)})")
    return decode(data)


def _prune(store: Store, checkpoint_key: str) -> None:
    steps = committed_steps(store, checkpoint_key)
    if len(steps) <= KEEP:
        return
    old = [k for k in store.list(checkpoint_key) if (step := _step_of(checkpoint_key, k)) is not None and step < steps[-KEEP]]
    # Commit records first: a folder deleted halfway is never taken for a complete checkpoint.
    for key in sorted(old, key=lambda k: not k.endswith(COMMIT_FILE)):
        store.delete(key)


def shape_of(config) -> dict[str, Any]:
    return {name: getattr(config, name) for name in SHAPE_FIELDS}
