"""Training tests: sharding, the synchronous update rule, data sharding, and real launcher runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.errors import TrainingError
from components.modelfile import load_model
from components.nets import SmallCNN, build_model
from components.store import join_key
from components.training.config import TrainConfig, from_argv, to_argv
from components.training.local import launch_local
from components.training.server import ParameterShard, make_optimizer, warmup_cosine
from components.training.sharding import ShardLayout, assign_flat, flatten
from components.training.worker import HISTORY_FILE, batch_indices, random_shift


def config(**overrides) -> TrainConfig:
    return TrainConfig(store_uri="/tmp/unused", dataset_prefix="p", output_prefix="o", **overrides)


def test_shards_are_size_balanced_and_cover_every_parameter_once():
    model = SmallCNN(1, 10)
    layout = ShardLayout.balanced(model, 3)
    names = [n for shard in layout.names for n in shard]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    sizes = layout.sizes(model)
    largest = max(p.numel() for p in model.parameters())
    assert max(sizes) - min(sizes) <= largest


def test_more_shards_than_parameters_is_refused():
    with pytest.raises(ValueError, match="at most 2 parameter-server shards"):
        ShardLayout.balanced(torch.nn.Linear(2, 2), 3)


def test_flatten_and_assign_round_trip():
    model = SmallCNN(1, 10)
    params = list(model.parameters())
    flat = flatten(params) + 1.0
    assign_flat(params, flat)
    assert torch.equal(flatten(params), flat)


def test_sync_shard_averages_all_workers_then_steps_once():
    cfg = config(num_workers=2, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
    start = torch.tensor([1.0, 2.0, 3.0])
    shard = ParameterShard(start, cfg, total_steps=100, warmup_steps=1)
    first = shard.push_pull(torch.tensor([1.0, 0.0, 2.0]))
    assert not first.done()  # waits for the second worker
    second = shard.push_pull(torch.tensor([3.0, 2.0, 0.0]))
    expected = start - 0.1 * torch.tensor([2.0, 1.0, 1.0])  # lr × mean gradient (warm-up factor 1 at step 0)
    assert torch.allclose(first.wait(), expected) and torch.allclose(second.wait(), expected)
    assert shard.step == 1


def test_two_workers_with_batch_b_match_one_process_with_batch_2b():
    """The sync rule reproduces large-batch SGD: mean of per-worker mean gradients = mean over 2B."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    cfg = config(num_workers=2, optimizer="adam", lr=0.01)
    single, worker = build_model("small_cnn", 1, 10), build_model("small_cnn", 1, 10)
    worker.load_state_dict(single.state_dict())
    single.eval(), worker.eval()  # no dropout: the comparison must be exact up to float error
    opt = make_optimizer(cfg, list(single.parameters()))
    torch.nn.functional.cross_entropy(single(x), y).backward()
    opt.step()
    shard = ParameterShard(flatten(list(worker.parameters())), cfg, total_steps=10, warmup_steps=1)
    futures = []
    for half in (slice(0, 8), slice(8, 16)):
        worker.zero_grad()
        torch.nn.functional.cross_entropy(worker(x[half]), y[half]).backward()
        futures.append(shard.push_pull(flatten([p.grad for p in worker.parameters()])))
    assert torch.allclose(futures[0].wait(), flatten(list(single.parameters())), atol=1e-6)


def test_each_worker_reads_its_own_block_of_every_global_batch():
    cfg = config(num_workers=3, batch_size=4, seed=7)
    per_worker = [batch_indices(50, epoch=2, worker=w, config=cfg) for w in range(3)]
    assert all(len(b) == 4 for b in per_worker)  # 50 // 12 steps, the same for every worker
    seen = np.concatenate([np.concatenate(b) for b in per_worker])
    assert len(set(seen.tolist())) == len(seen) == 48
    assert not np.array_equal(np.concatenate(batch_indices(50, 3, 0, cfg)), np.concatenate(per_worker[0]))


def test_random_shift_keeps_shape_and_pixels():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 3:5, 3:5] = 255
    shifted = random_shift(images, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    assert (shifted.sum(dim=(1, 2, 3)) == 4 * 255).all()


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(total_steps=100, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5) and factor(100) == pytest.approx(0.0)


def test_config_survives_the_command_line_round_trip():
    cfg = config(epochs=3, lr=0.5, augment=False, num_ps=2)
    assert from_argv(to_argv(cfg)) == cfg


def test_invalid_config_says_what_was_expected():
    with pytest.raises(ValueError, match=r"expected optimizer in \('sgd', 'adam', 'adamw'\), got 'lbfgs'"):
        config(optimizer="lbfgs").validate()


@pytest.mark.slow
def test_local_launcher_trains_and_writes_a_loadable_model(prepared, capsys):
    cfg = TrainConfig(store_uri=prepared.store_uri, dataset_prefix=prepared.prefix, output_prefix="runs/t1/model",
                      epochs=2, num_ps=2, num_workers=2)
    launch_local(cfg, timeout_s=240)
    out = capsys.readouterr().out
    assert "[worker0] epoch 2/2" in out  # every rank's output is streamed with its name
    folder = Path(prepared.store_uri) / "runs/t1/model"
    _, card = load_model(folder)
    assert card.class_names == [str(d) for d in range(10)] and card.input_shape == [1, 28, 28]
    history = json.loads((folder / HISTORY_FILE).read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["epochs"][-1]["val_accuracy"] > 0.3  # two epochs are far above chance (0.1)


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_with_its_last_lines(prepared):
    cfg = TrainConfig(store_uri=prepared.store_uri, dataset_prefix="prepared/does-not-exist", output_prefix="runs/bad/model")
    with pytest.raises(TrainingError, match=r"(?s)training failed: \w+ exited with code 1; its last lines:\n.*no prepared data set"):
        launch_local(cfg, timeout_s=120)
    assert not (Path(prepared.store_uri) / join_key("runs/bad/model", HISTORY_FILE)).exists()


def test_training_report_draws_both_curves_and_the_table():
    from components.training.report import training_report

    history = [{"epoch": i, "loss": 1 / i, "train_accuracy": 0.5 + i / 10, "val_loss": 1.1 / i, "val_accuracy": 0.4 + i / 10,
                "comm_fraction": 0.2, "seconds": 1.0} for i in (1, 2, 3)]
    page = training_report(history, {"arch": "small_cnn", "store_uri": "/secret/path"})
    assert page.count("<svg") == 2 and page.count("<polyline") == 4
    assert "best validation accuracy <b>0.7000</b> at epoch 3" in page
    assert "arch=small_cnn" in page and "/secret/path" not in page
