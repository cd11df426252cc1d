"""The worker side: pull parameters, compute gradients on this device, push them, repeat.

Each epoch every worker reads its own slice of the same seeded permutation of the training split:
at step ``s`` the global batch is ``perm[s·N·B : (s+1)·N·B]`` and worker ``w`` takes the ``w``-th
block of ``B``. Worker 0 also validates after each epoch, keeps the best weights, and writes the
model folder (``model.safetensors``, ``model.json``, ``history.json``) to the store at the end.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed.rpc as rpc
from torch.nn import functional as F

from components.data.prepare import DatasetInfo, load_prepared
from components.modelfile import ModelCard, save_model
from components.nets import build_model
from components.predict import predict_logits
from components.preprocessing import normalize
from components.store import join_key, open_store
from components.training import server
from components.training.config import TrainConfig
from components.training.sharding import ShardLayout, assign_flat, flatten

HISTORY_FILE = "history.json"


def ps_name(index: int) -> str:
    return f"ps{index}"


def worker_name(index: int) -> str:
    return f"worker{index}"


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    comm_fraction: float


class RemoteParameters:
    """This worker's handle on the sharded parameters: one flat tensor and one RPC per shard."""

    def __init__(self, model: torch.nn.Module, layout: ShardLayout):
        self.groups = layout.groups(model)
        self.buffers = [torch.empty(n) for n in layout.sizes(model)]
        self.comm_seconds = 0.0

    def pull(self) -> None:
        futures = [rpc.rpc_async(ps_name(i), server.pull) for i in range(len(self.groups))]
        for group, future in zip(self.groups, futures):
            assign_flat(group, future.wait())

    def push_pull(self) -> None:
        """Send this step's gradients and load the parameters the shards answer with."""
        started = time.perf_counter()
        futures = []
        for i, (group, buffer) in enumerate(zip(self.groups, self.buffers)):
            flatten([p.grad if p.grad is not None else torch.zeros_like(p) for p in group], out=buffer)
            futures.append(rpc.rpc_async(ps_name(i), server.push_pull, args=(buffer,)))
        for group, future in zip(self.groups, futures):
            assign_flat(group, future.wait())
        self.comm_seconds += time.perf_counter() - started


def steps_per_epoch(num_train: int, config: TrainConfig) -> int:
    steps = num_train // (config.num_workers * config.batch_size)
    if steps < 1:
        raise ValueError(
            f"expected at least {config.num_workers * config.batch_size} training images "
            f"(num_workers × batch_size), got {num_train}"
        )
    return steps


def batch_indices(num_train: int, epoch: int, worker: int, config: TrainConfig) -> list[np.ndarray]:
    """This worker's batches for ``epoch``: its block of every global batch of one seeded permutation."""
    perm = np.random.default_rng([config.seed, epoch]).permutation(num_train)
    global_batch = config.num_workers * config.batch_size
    starts = (s * global_batch + worker * config.batch_size for s in range(steps_per_epoch(num_train, config)))
    return [perm[start : start + config.batch_size] for start in starts]


def random_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill): cheap, label-preserving."""
    _, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def model_card(info: DatasetInfo, config: TrainConfig) -> ModelCard:
    channels, height, width = info.image_shape
    return ModelCard(config.arch, channels, height, width, list(info.class_names), list(info.mean), list(info.std))


def run_worker(config: TrainConfig, worker: int) -> None:
    """Train until the last epoch; worker 0 then writes the best model to the store."""
    torch.manual_seed(config.seed)
    device = pick_device()
    data = load_prepared(config.store_uri, config.dataset_prefix, ("train", "val"))
    card = model_card(data.info, config)
    model = build_model(config.arch, card.in_channels, card.num_classes).to(device)
    remote = RemoteParameters(model, ShardLayout.balanced(model, config.num_ps))
    remote.pull()
    images = torch.from_numpy(data.images["train"])
    labels = torch.from_numpy(data.labels["train"])
    generator = torch.Generator().manual_seed(config.seed * 1000 + worker)
    history: list[EpochStats] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, config.epochs + 1):
        stats = train_one_epoch(model, remote, images, labels, card, config, epoch, worker, generator)
        if worker != 0:
            continue
        stats = _validate(model, stats, data.images["val"], data.labels["val"], card)
        history.append(stats)
        _log_epoch(stats, config.epochs)
        if best is None or stats.val_accuracy >= best[0]:
            best = (stats.val_accuracy, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    if worker == 0 and best is not None:
        model.load_state_dict(best[1])
        _write_model(model, card, history, config)


def train_one_epoch(model, remote: RemoteParameters, images, labels, card: ModelCard, config: TrainConfig,
                    epoch: int, worker: int, generator: torch.Generator) -> EpochStats:
    model.train()
    device = next(model.parameters()).device
    started, comm_before = time.perf_counter(), remote.comm_seconds
    batches = batch_indices(len(images), epoch, worker, config)
    total_loss, correct, seen = 0.0, 0, 0
    for step, idx in enumerate(batches, 1):
        x, y = images[idx], labels[idx].to(device)
        if config.augment:
            x = random_shift(x, generator)
        logits = model(normalize(x.to(device), card.mean, card.std))
        loss = F.cross_entropy(logits, y)
        model.zero_grad(set_to_none=False)
        loss.backward()
        remote.push_pull()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if worker == 0:
            _log_progress(epoch, step, len(batches), total_loss / seen)
    elapsed = time.perf_counter() - started
    comm = (remote.comm_seconds - comm_before) / max(elapsed, 1e-9)
    return EpochStats(epoch, total_loss / seen, correct / seen, float("nan"), float("nan"), elapsed, comm)


def _validate(model, stats: EpochStats, images: np.ndarray, labels: np.ndarray, card: ModelCard) -> EpochStats:
    model.eval()
    logits = predict_logits(model, torch.from_numpy(images), card)
    target = torch.from_numpy(labels)
    stats.val_loss = float(F.cross_entropy(logits, target))
    stats.val_accuracy = float((logits.argmax(1) == target).float().mean())
    return stats


def _log_progress(epoch: int, step: int, steps: int, loss: float) -> None:
    # Machine-readable; the local launcher draws a progress bar from these when on a terminal.
    if step == steps or step % max(1, steps // 20) == 0:
        print(f"@progress {epoch} {step} {steps} {loss:.4f}", flush=True)


def _log_epoch(s: EpochStats, epochs: int) -> None:
    print(
        f"epoch {s.epoch}/{epochs}  loss {s.loss:.4f}  train_acc {s.train_accuracy:.4f}  "
        f"val_loss {s.val_loss:.4f}  val_acc {s.val_accuracy:.4f}  comm {s.comm_fraction:.0%}  {s.seconds:.1f}s",
        flush=True,
    )


def _write_model(model, card: ModelCard, history: list[EpochStats], config: TrainConfig) -> None:
    store = open_store(config.store_uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_model(folder, model, card)
        (folder / HISTORY_FILE).write_text(json.dumps({"epochs": [asdict(s) for s in history], "config": asdict(config)}, indent=2))
        for path in sorted(folder.iterdir()):
            store.upload_file(join_key(config.output_prefix, path.name), path)
