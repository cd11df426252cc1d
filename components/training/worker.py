"""The worker side: pull parameters, compute gradients on this device, push them, repeat.

Data: each worker streams its own part of every epoch from the prepared shards
(:mod:`components.training.input`); the batch of a step and its augmentation are a pure function of
``(seed, worker, global step)``, and dropout is seeded the same way. The global step is therefore
what a checkpoint records as the data position: a job resumed from step ``s`` sees exactly the
batches an uninterrupted one would have seen from ``s`` on.

Device: CUDA when present (``bf16=True`` adds bfloat16 autocast to the forward pass; parameters,
gradients and the servers' state stay float32), CPU otherwise. Gradients and parameters travel as one
float32 CPU tensor per shard: RPC device maps are beta and do not work with everything RPC does.

BatchNorm buffers (running mean/variance) are not parameters: the servers never see them. Each worker
keeps its own, and worker 0's are the model's, as DistributedDataParallel keeps rank 0's: worker 0
validates with them, saves them with the model and in each checkpoint. Running statistics only matter
in evaluation, which only worker 0 does, so the other workers' buffers never influence the result;
worker 0 estimates them from its 1/N of every global batch, a sample of the same distribution.

Worker 0 also validates after each epoch, keeps the best weights, writes the checkpoints (see
:mod:`components.training.server` for how they stay consistent) and writes the model folder
(``model.safetensors``, ``model.json``, ``history.json``) to the store at the end.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.rpc as rpc
from torch.nn import functional as F

from components.data.prepare import DatasetInfo, read_info
from components.data.shards import iter_records, temporary_reader
from components.modelfile import ModelCard, save_model
from components.nets import build_model
from components.predict import predict_logits
from components.presets import normalize, resolve_augment
from components.store import join_key, open_store
from components.training import checkpoint, server
from components.training.config import TrainConfig
from components.training.input import step_seed, steps_per_epoch, train_batches
from components.training.sharding import ShardLayout, assign_flat, flatten

HISTORY_FILE = "history.json"
VALIDATION_BATCH = 128  # images per forward pass: bounds activation memory (64x64 RGB at 512 took ~0.5 GiB)


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
    """This worker's handle on the sharded parameters: one flat tensor and one RPC per shard per step."""

    def __init__(self, model: torch.nn.Module, layout: ShardLayout, worker: int):
        self.groups = layout.groups(model)
        pin = next(model.parameters()).device.type == "cuda"  # page-locked: faster device-to-host copies
        self.buffers = [torch.empty(n, pin_memory=pin) for n in layout.sizes(model)]
        self.versions = [0] * len(self.groups)
        self.worker = worker
        self.comm_seconds = 0.0
        self.bytes_moved = 0  # tensor payload: gradients sent plus parameters received (RPC framing not included)

    def pull(self) -> None:
        futures = [rpc.rpc_async(ps_name(i), server.pull) for i in range(len(self.groups))]
        self._load(futures)

    def push_pull(self) -> None:
        """Send this step's gradients and load the parameters the shards answer with."""
        started = time.perf_counter()
        futures = []
        for i, (group, buffer) in enumerate(zip(self.groups, self.buffers)):
            flatten([p.grad if p.grad is not None else torch.zeros_like(p) for p in group], out=buffer)
            futures.append(rpc.rpc_async(ps_name(i), server.push_pull, args=(self.worker, buffer, self.versions[i])))
            self.bytes_moved += buffer.numel() * buffer.element_size()
        self._load(futures)
        self.comm_seconds += time.perf_counter() - started

    def _load(self, futures: list) -> None:
        for i, (group, future) in enumerate(zip(self.groups, futures)):
            flat, self.versions[i] = future.wait()
            self.bytes_moved += flat.numel() * flat.element_size()
            assign_flat(group, flat)

    def finish(self) -> None:
        """Tell every shard this worker is done (each then logs its summary and shuts down)."""
        futures = [rpc.rpc_async(ps_name(i), server.finish, args=(self.worker,)) for i in range(len(self.groups))]
        torch.futures.wait_all(futures)


@dataclass
class Progress:
    """Everything a worker must carry across a restart (only worker 0 uses more than ``step``)."""

    step: int = 0  # global steps done, over all epochs: the data position
    loss_sum: float = 0.0  # this epoch so far
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    comm_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def end_epoch(self) -> None:
        self.loss_sum, self.correct, self.seen, self.seconds, self.comm_seconds = 0.0, 0, 0, 0.0, 0.0


def pick_device(worker: int) -> torch.device:
    """A GPU per worker when there are several on this machine (a pod has one: all use cuda:0), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", worker % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def model_card(info: DatasetInfo, config: TrainConfig) -> ModelCard:
    channels, height, width = info.image_shape
    extra = {"augment": resolve_augment(config.augment, channels), "dataset": info.prefix}
    return ModelCard(config.arch, channels, height, width, list(info.class_names), list(info.mean), list(info.std), extra=extra)


def run_worker(config: TrainConfig, worker: int) -> None:
    """Train until the last epoch (resuming from the latest checkpoint); worker 0 then writes the model."""
    Worker(config, worker).run()


class Worker:
    """One worker's training loop and, for worker 0, validation, checkpoints and the model."""

    def __init__(self, config: TrainConfig, worker: int):
        self.config, self.worker, self.device = config, worker, pick_device(worker)
        self.store = open_store(config.store_uri)
        self.info = read_info(self.store, config.dataset_prefix)
        self.card = model_card(self.info, config)
        torch.manual_seed(config.seed)
        self.model = build_model(config.arch, self.card.in_channels, self.card.num_classes).to(self.device)
        self.remote = RemoteParameters(self.model, ShardLayout.balanced(self.model, config.num_ps), worker)
        self.steps = steps_per_epoch(self.info.counts["train"], config)
        self.progress = Progress()

    def run(self) -> None:
        self.resume()
        self.remote.pull()
        batches = train_batches(self.store, self.info, self.config, self.worker, start_step=self.progress.step)
        while self.progress.step < self.steps * self.config.epochs:
            epoch = self.progress.step // self.steps + 1
            self.train_epoch(epoch, batches)
            self.end_epoch(epoch)
        batches.close()
        if self.worker == 0:
            self.write_model()
        self.remote.finish()

    def train_epoch(self, epoch: int, batches) -> None:
        self.model.train()
        p, every = self.progress, self.config.checkpoint_every
        for index in range(p.step % self.steps, self.steps):
            started, comm_before = time.perf_counter(), self.remote.comm_seconds
            x, y = next(batches)
            loss_sum, correct = self.train_step(x, y)
            p.step, p.loss_sum, p.correct, p.seen = p.step + 1, p.loss_sum + loss_sum, p.correct + correct, p.seen + len(y)
            p.seconds += time.perf_counter() - started
            p.comm_seconds += self.remote.comm_seconds - comm_before
            if self.worker == 0:
                _log_progress(epoch, index + 1, self.steps, p.loss_sum / p.seen)
            if every and p.step % every == 0 and index + 1 < self.steps:
                self.checkpoint()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """One forward/backward pass on an (augmented) batch and one push-pull; returns (summed loss, correct)."""
        torch.manual_seed(step_seed(self.config.seed, self.worker, self.progress.step))  # dropout
        y = y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            logits = self.model(normalize(x.to(self.device, non_blocking=True), self.card.mean, self.card.std))
        loss = F.cross_entropy(logits.float(), y)
        self.model.zero_grad(set_to_none=False)
        loss.backward()
        self.remote.push_pull()
        return loss.item() * len(y), int((logits.argmax(1) == y).sum())

    def end_epoch(self, epoch: int) -> None:
        p = self.progress
        if self.worker == 0:
            stats = EpochStats(epoch, p.loss_sum / p.seen, p.correct / p.seen, math.nan, math.nan, p.seconds,
                               p.comm_seconds / max(p.seconds, 1e-9))
            self.validate(stats)
            p.history.append(asdict(stats))
            _log_epoch(stats, self.config.epochs)
            if stats.val_accuracy >= p.best_accuracy:
                p.best_accuracy = stats.val_accuracy
                p.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        p.end_epoch()
        self.checkpoint()

    def validate(self, stats: EpochStats) -> None:
        """Loss and accuracy on the validation split, streamed shard by shard."""
        self.model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        with temporary_reader(self.store, self.info.prefix, self.info.image_shape) as reader:
            for x, y in iter_records(reader, self.info.shard_list("val"), VALIDATION_BATCH):
                logits, target = predict_logits(self.model, torch.from_numpy(x), self.card), torch.from_numpy(y)
                loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
                correct += int((logits.argmax(1) == target).sum())
                count += len(y)
        stats.val_loss, stats.val_accuracy = loss_sum / count, correct / count
        self.model.train()

    def checkpoint(self) -> None:
        """Write checkpoint ``progress.step``: worker 0 writes it; in async mode everyone waits for it."""
        step, is_async = self.progress.step, self.config.mode == "async"
        if is_async:
            rpc.rpc_sync(ps_name(0), server.checkpoint_barrier, args=(self.worker, step))
        if self.worker != 0:
            return
        futures = [rpc.rpc_async(ps_name(i), server.save_checkpoint, args=(step, None if is_async else step))
                   for i in range(self.config.num_ps)]
        files = {checkpoint.shard_file(i): f.wait() for i, f in enumerate(futures)}
        key = self.config.checkpoint_key
        files[checkpoint.WORKER_FILE] = checkpoint.write_part(self.store, key, step, checkpoint.WORKER_FILE, self.worker_state())
        checkpoint.commit(self.store, key, checkpoint.Commit(step, checkpoint.shape_of(self.config), files))
        if is_async:
            rpc.rpc_sync(ps_name(0), server.release_barrier, args=(step,))

    def worker_state(self) -> dict[str, Any]:
        p = self.progress
        return {"buffers": {k: v.detach().cpu() for k, v in self.model.named_buffers()},
                "totals": {"loss_sum": p.loss_sum, "correct": p.correct, "seen": p.seen, "seconds": p.seconds, "comm_seconds": p.comm_seconds},
                "history": p.history, "best_accuracy": p.best_accuracy, "best_state": p.best_state}

    def resume(self) -> None:
        """Continue from the latest complete checkpoint, if there is one."""
        record = checkpoint.latest(self.store, self.config.checkpoint_key, checkpoint.shape_of(self.config))
        if record is None:
            return
        self.progress.step = record.step
        if self.worker == 0:
            self.restore(checkpoint.read_part(self.store, self.config.checkpoint_key, record, checkpoint.WORKER_FILE))
            print(f"resuming from the checkpoint of step {record.step} (epoch {record.step // self.steps + 1}, "
                  f"step {record.step % self.steps} of {self.steps})", flush=True)

    def restore(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                buffer.copy_(state["buffers"][name])
        p = self.progress
        totals = state["totals"]
        p.loss_sum, p.correct, p.seen = totals["loss_sum"], totals["correct"], totals["seen"]
        p.seconds, p.comm_seconds = totals["seconds"], totals["comm_seconds"]
        p.history, p.best_accuracy, p.best_state = list(state["history"]), state["best_accuracy"], dict(state["best_state"])

    def write_model(self) -> None:
        if self.progress.best_state:
            self.model.load_state_dict(self.progress.best_state)
        history = {"epochs": self.progress.history, "config": asdict(self.config)}
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            save_model(folder, self.model, self.card)
            (folder / HISTORY_FILE).write_text(json.dumps(history, indent=2))
            for path in sorted(folder.iterdir()):
                self.store.upload_file(join_key(self.config.output_prefix, path.name), path)


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
