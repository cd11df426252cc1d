"""Training configuration: one dataclass, one argument-parser factory reused by every launcher.

The launchers turn a :class:`TrainConfig` into command-line arguments with :func:`to_argv`; each
rank parses them back with :func:`from_argv`. Rank and world size come from the environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), exactly as the Kubeflow Training
Operator sets them for a PyTorchJob, so the same entry point runs as a local process or as a pod.
"""

from __future__ import annotations

import argparse
import dataclasses
import posixpath
from dataclasses import dataclass

from components.archs import ARCHITECTURES, SMALL_CNN
from components.presets import AUGMENT_PRESETS

OPTIMIZERS = ("sgd", "adam", "adamw")
MODES = ("sync", "async")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a rank needs to know. Field docs double as ``--help`` text."""

    store_uri: str
    dataset_prefix: str
    output_prefix: str
    arch: str = SMALL_CNN
    epochs: int = 15
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: float = 1.0
    num_ps: int = 1
    num_workers: int = 2
    mode: str = "sync"
    augment: str = "auto"  # a preset of components.presets (auto: chosen from the data set)
    seed: int = 0
    rpc_timeout_s: float = 60.0
    checkpoint_every: int = 100
    checkpoint_prefix: str = ""
    max_staleness: int = 8
    bf16: bool = False
    loader_workers: int = 0  # DataLoader processes per worker decoding and augmenting batches (0: in the worker)
    prefetch: int = 2  # batches each loader process prepares ahead
    shuffle_window: int = 8192  # images shuffled together inside a worker's part of an epoch

    def validate(self) -> None:
        checks = [
            (self.arch in ARCHITECTURES, f"arch in {ARCHITECTURES}", self.arch),
            (self.optimizer in OPTIMIZERS, f"optimizer in {OPTIMIZERS}", self.optimizer),
            (self.mode in MODES, f"mode in {MODES}", self.mode),
            (self.epochs >= 1, "epochs >= 1", self.epochs),
            (self.batch_size >= 1, "batch_size >= 1", self.batch_size),
            (self.lr > 0, "lr > 0", self.lr),
            (self.num_ps >= 1, "num_ps >= 1", self.num_ps),
            (self.num_workers >= 1, "num_workers >= 1", self.num_workers),
            (self.rpc_timeout_s > 0, "rpc_timeout_s > 0", self.rpc_timeout_s),
            (self.loader_workers >= 0, "loader_workers >= 0", self.loader_workers),
            (self.prefetch >= 1, "prefetch >= 1", self.prefetch),
            (self.shuffle_window >= 1, "shuffle_window >= 1", self.shuffle_window),
            (self.augment in AUGMENT_PRESETS, f"augment in {AUGMENT_PRESETS}", self.augment),
            (self.checkpoint_every >= 0, "checkpoint_every >= 0 (0: only at epoch ends)", self.checkpoint_every),
            # A gradient from one of N workers is usually N-1 updates old when it arrives (each other worker
            # pushed once meanwhile): a smaller bound would drop most gradients.
            (self.mode != "async" or self.max_staleness >= self.num_workers - 1,
             f"max_staleness >= num_workers - 1 = {self.num_workers - 1} in async mode", self.max_staleness),
        ]
        for ok, expected, found in checks:
            if not ok:
                raise ValueError(f"expected {expected}, got {found!r}")

    @property
    def world_size(self) -> int:
        return self.num_ps + self.num_workers

    @property
    def checkpoint_key(self) -> str:
        """Where checkpoints live: ``checkpoint_prefix``, else ``<parent>/checkpoints/<name>`` of the output."""
        if self.checkpoint_prefix:
            return self.checkpoint_prefix
        parent, name = posixpath.split(self.output_prefix.strip("/"))
        return posixpath.join(parent, "checkpoints", name) if parent else f"checkpoints/{name}"


def build_parser() -> argparse.ArgumentParser:
    """An argument parser with one ``--flag`` per :class:`TrainConfig` field."""
    parser = argparse.ArgumentParser(description="Run one rank of parameter-server training.")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        kind = {"int": int, "float": float, "bool": _parse_bool}.get(str(f.type), str)
        parser.add_argument(flag, dest=f.name, type=kind, required=required, default=None if required else f.default)
    return parser


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def to_argv(config: TrainConfig) -> list[str]:
    argv = []
    for f in dataclasses.fields(config):
        argv += ["--" + f.name.replace("_", "-"), str(getattr(config, f.name))]
    return argv


def from_argv(argv: list[str] | None = None) -> TrainConfig:
    config = TrainConfig(**vars(build_parser().parse_args(argv)))
    config.validate()
    return config
