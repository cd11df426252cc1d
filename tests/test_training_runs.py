"""Real training runs through the local launcher: processes, RPC, checkpoints, killed ranks, relaunches.

The fault tests SIGKILL a rank from outside (as the kernel's OOM killer or a node loss would) right
after the first checkpoint is committed, and compare the finished model's test accuracy with an
uninterrupted run of the same configuration.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.errors import TrainingError
from components.modelfile import load_model
from components.predict import predict_logits
from components.store import join_key
from components.training.config import TrainConfig
from components.training.local import launch_local
from components.training.worker import HISTORY_FILE
from tests.conftest import base_config
from tests.helpers import load_split, prepare_at

pytestmark = pytest.mark.slow

# The fault tests' reference, the fixture ``uninterrupted`` (tests/conftest.py), is a run of ``base_config`` with no
# faults, shared with the ONNX tests, which read its model.


def accuracy_on_test_split(prepared, cfg: TrainConfig) -> float:
    model, card = load_model(Path(cfg.store_uri) / cfg.output_prefix)
    images, labels = load_split(prepared, "test")
    logits = predict_logits(model, torch.from_numpy(images), card)
    return float((logits.argmax(1) == torch.from_numpy(labels)).float().mean())


def kill_after_first_checkpoint(cfg: TrainConfig, victim: str, killed: list[str]):
    """An ``on_start`` hook: in the first attempt, SIGKILL ``victim`` once a checkpoint is committed."""

    def watch(pid: int) -> None:
        deadline = time.monotonic() + 120
        while not list((Path(cfg.store_uri) / cfg.checkpoint_key).glob("*/COMMIT.json")):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        killed.append(victim)

    def on_start(attempt: int, pids: dict[str, int]) -> None:
        if attempt == 0:
            threading.Thread(target=watch, args=(pids[victim],), daemon=True).start()

    return on_start


def test_local_launcher_trains_and_writes_a_loadable_model(prepared, uninterrupted):
    cfg, out = uninterrupted
    assert "[worker0] epoch 2/2" in out  # every rank's output is streamed with its name
    assert "[launcher]" not in out  # nothing was relaunched
    folder = Path(prepared.store_uri) / cfg.output_prefix
    _, card = load_model(folder)
    assert card.class_names == [str(d) for d in range(10)] and card.input_shape == [1, 28, 28]
    history = json.loads((folder / HISTORY_FILE).read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["epochs"][-1]["val_accuracy"] > 0.3  # two epochs are far above chance (0.1)
    assert not list(folder.rglob("*.pt"))  # checkpoints stay out of the model folder


@pytest.mark.parametrize("victim", ["worker1", "ps0"])
def test_a_run_whose_rank_is_killed_resumes_and_matches_the_uninterrupted_run(prepared, uninterrupted, victim):
    reference, _ = uninterrupted
    cfg = replace(base_config(prepared, f"killed-{victim}"), checkpoint_every=10)
    killed: list[str] = []
    out = io.StringIO()
    launch_local(cfg, timeout_s=300, out=out, backoff_limit=2, on_start=kill_after_first_checkpoint(cfg, victim, killed))
    log = out.getvalue()
    assert killed == [victim]
    assert f"[launcher] {victim} was killed by signal 9; relaunching every rank from the latest checkpoint" in log
    assert "[worker0] resuming from the checkpoint of step" in log
    assert abs(accuracy_on_test_split(prepared, cfg) - accuracy_on_test_split(prepared, reference)) <= 0.01


def test_a_rank_that_keeps_dying_fails_the_job_at_the_backoff_limit(prepared):
    cfg = base_config(prepared, "doomed")

    def kill_worker0(attempt: int, pids: dict[str, int]) -> None:
        os.kill(pids["worker0"], signal.SIGKILL)

    out = io.StringIO()
    with pytest.raises(TrainingError, match=r"training failed: worker0 was killed by signal 9 \(backoff limit 1 reached\); its last lines"):
        launch_local(cfg, timeout_s=120, out=out, backoff_limit=1, on_start=kill_worker0)
    assert out.getvalue().count("[launcher] worker0 was killed by signal 9; relaunching") == 1


def test_a_permanent_failure_fails_at_once_with_the_rank_s_last_lines(prepared):
    cfg = TrainConfig(store_uri=prepared.store_uri, dataset_prefix="prepared/does-not-exist", output_prefix="runs/bad/model")
    out = io.StringIO()
    with pytest.raises(TrainingError, match=r"(?s)training failed: \w+ exited with code 1; its last lines:\n.*no prepared data set"):
        launch_local(cfg, timeout_s=120, out=out)
    assert "[launcher]" not in out.getvalue()  # exit code 1 means a restart cannot help: none was tried
    assert not (Path(prepared.store_uri) / join_key("runs/bad/model", HISTORY_FILE)).exists()


def test_async_mode_trains_with_bounded_staleness_and_consistent_checkpoints(prepared):
    cfg = base_config(prepared, "async", mode="async", max_staleness=4, checkpoint_every=10)
    out = io.StringIO()
    launch_local(cfg, timeout_s=240, out=out)
    log = out.getvalue()
    # Each shard reports what it applied: 2 workers × 22 steps × 2 epochs gradients in all.
    for shard in ("ps0", "ps1"):
        line = next(line for line in log.splitlines() if line.startswith(f"[{shard}] {shard}:"))
        applied, dropped = (int(s) for s in re.search(r"(\d+) updates, (\d+) stale gradients dropped", line).groups())
        assert applied + dropped == 88 and applied >= 44  # drops happen only under heavy contention
        assert int(re.search(r"max applied staleness (\d+) \(bound 4\)", line).group(1)) <= 4
    history = json.loads((Path(cfg.store_uri) / cfg.output_prefix / HISTORY_FILE).read_text())
    assert history["epochs"][-1]["val_accuracy"] > 0.3
    assert len(list((Path(cfg.store_uri) / cfg.checkpoint_key).glob("*/COMMIT.json"))) == 2


def write_colour_folder(root: Path, per_class: int = 30) -> None:
    """A tiny 32×32 RGB ImageFolder: two classes, reddish and bluish noise."""
    rng = np.random.default_rng(0)
    for name, channel in (("blue", 2), ("red", 0)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            pixels[:, :, channel] += 150
            Image.fromarray(pixels, mode="RGB").save(root / name / f"{i}.png")


def test_resnet18_with_batchnorm_trains_through_the_parameter_servers_on_rgb_images(tmp_path):
    write_colour_folder(tmp_path / "raw")
    info = prepare_at(str(tmp_path / "raw"), str(tmp_path / "store"), seed=0)
    cfg = TrainConfig(store_uri=info.store_uri, dataset_prefix=info.prefix, output_prefix="runs/r18/model", arch="resnet18",
                      epochs=1, batch_size=8, num_ps=2, num_workers=2, bf16=True)
    launch_local(cfg, timeout_s=240, out=io.StringIO())
    model, card = load_model(Path(info.store_uri) / cfg.output_prefix)
    assert card.arch == "resnet18" and card.input_shape == [3, 32, 32]
    # Worker 0's BatchNorm running statistics were saved with the model: they moved from their initial values.
    assert not torch.equal(model.bn1.running_mean, torch.zeros_like(model.bn1.running_mean))
    assert int(model.bn1.num_batches_tracked) == 3  # worker 0's three steps of the one epoch
