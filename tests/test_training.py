"""Training unit tests: sharding, the sync and async update rules, checkpoints, data order, configuration.

Real launcher runs (processes, faults) are in ``test_training_runs.py``.
"""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from components.data.shards import ShardInfo
from components.errors import TrainingError
from components.nets import SmallCNN, build_model
from components.presets import augment, random_resized_crop_flip, random_shift, resolve_augment
from components.store import open_store
from components.training import checkpoint
from components.training.config import TrainConfig, from_argv, to_argv
from components.training.input import EpochPlan, step_seed
from components.training.server import AsyncShard, CheckpointBarrier, SyncShard, make_optimizer, warmup_cosine
from components.training.sharding import ShardLayout, assign_flat, flatten


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
    shard = SyncShard(start, cfg, total_steps=100, warmup_steps=1)
    first = shard.push_pull(1, torch.tensor([1.0, 0.0, 2.0]), 0)
    assert not first.done()  # waits for the other worker
    second = shard.push_pull(0, torch.tensor([3.0, 2.0, 0.0]), 0)
    expected = start - 0.1 * torch.tensor([2.0, 1.0, 1.0])  # lr × mean gradient (warm-up factor 1 at step 0)
    (params1, version1), (params0, version0) = first.wait(), second.wait()
    assert torch.allclose(params1, expected) and torch.allclose(params0, expected)
    assert shard.step == version0 == version1 == 1


def test_sync_shard_refuses_a_second_push_from_the_same_worker_in_one_step():
    shard = SyncShard(torch.zeros(3), config(num_workers=2), total_steps=10, warmup_steps=1)
    shard.push_pull(0, torch.ones(3), 0)
    with pytest.raises(ValueError, match="worker 0 pushed twice for step 1"):
        shard.push_pull(0, torch.ones(3), 0)


def test_two_workers_with_batch_b_match_one_process_with_batch_2b():
    """The sync rule reproduces large-batch SGD: mean of per-worker mean gradients = mean over 2B.

    Plain SGD, because its step is linear in the gradient: a sum instead of a mean would double it. (Adam's
    step does not change with the gradient's scale, and its division by sqrt(v) turns float noise in a
    near-zero gradient into ~1e-6 parameter differences.)"""
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    cfg = config(num_workers=2, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
    single, worker = build_model("small_cnn", 1, 10), build_model("small_cnn", 1, 10)
    worker.load_state_dict(single.state_dict())
    single.eval(), worker.eval()  # no dropout: the comparison must be exact up to float error
    opt = make_optimizer(cfg, list(single.parameters()))
    torch.nn.functional.cross_entropy(single(x), y).backward()
    opt.step()
    shard = SyncShard(flatten(list(worker.parameters())), cfg, total_steps=10, warmup_steps=1)
    futures = []
    for w, half in enumerate((slice(0, 8), slice(8, 16))):
        worker.zero_grad()
        torch.nn.functional.cross_entropy(worker(x[half]), y[half]).backward()
        futures.append(shard.push_pull(w, flatten([p.grad for p in worker.parameters()]), 0))
    assert torch.allclose(futures[0].wait()[0], flatten(list(single.parameters())), atol=1e-6)


def plan_records(plan: EpochPlan, epoch: int, worker: int) -> list[tuple[int, int]]:
    return [pair for b in range(plan.steps) for pair in zip(*(a.tolist() for a in plan.batch(epoch, worker, b)))]


def test_each_worker_reads_its_own_part_of_every_epoch_and_only_a_share_of_the_shards():
    shards = [ShardInfo(f"train/shard-{i:05d}.bin", count, 0, "") for i, count in enumerate([10] * 9 + [7])]
    plan = EpochPlan.of(shards, config(num_workers=3, batch_size=4, seed=7, shuffle_window=8))
    assert plan.steps == 97 // 12 and plan.window == 8
    per_worker = [plan_records(plan, 2, w) for w in range(3)]
    assert all(len(records) == 8 * 4 for records in per_worker)  # the same number of steps for every worker
    seen = [pair for records in per_worker for pair in records]
    assert len(set(seen)) == len(seen) == 96  # disjoint
    assert all(0 <= row < shards[shard].count for shard, row in seen)
    assert all(len({shard for shard, _ in records}) <= 5 for records in per_worker)  # about a third of the 10 shards each
    assert plan_records(plan, 3, 0) != per_worker[0]  # another epoch, another order
    assert plan_records(plan, 2, 0) == per_worker[0]  # a pure function: what resuming relies on


def test_step_randomness_depends_only_on_seed_worker_and_step():
    # What makes a resumed job see the same augmentation and dropout as an uninterrupted one.
    assert step_seed(0, 1, 40) == step_seed(0, 1, 40)
    assert len({step_seed(0, 1, 40), step_seed(0, 0, 40), step_seed(0, 1, 41), step_seed(1, 1, 40)}) == 4


def test_random_shift_keeps_shape_and_pixels():
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 3:5, 3:5] = 255
    shifted = random_shift(images, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    assert (shifted.sum(dim=(1, 2, 3)) == 4 * 255).all()


def test_the_photo_preset_crops_and_flips_reproducibly_from_its_generator():
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(2, 3, 16, 16)
    a = random_resized_crop_flip(images, torch.Generator().manual_seed(1))
    b = random_resized_crop_flip(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a, random_resized_crop_flip(images, torch.Generator().manual_seed(2)))
    # Full-area crops with a flip are mirror images: the crop geometry is what the preset says.
    full = random_resized_crop_flip(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(full, images))


def test_auto_augmentation_fits_the_data():
    assert resolve_augment("auto", 3) == "photos" and resolve_augment("auto", 1) == "digits"
    assert torch.equal(augment(torch.ones(1, 1, 4, 4, dtype=torch.uint8), "none", torch.Generator()), torch.ones(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected an augmentation preset in"):
        resolve_augment("flips", 3)


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(total_steps=100, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5) and factor(100) == pytest.approx(0.0)


def test_config_survives_the_command_line_round_trip():
    cfg = config(epochs=3, lr=0.5, augment="none", num_ps=2, mode="async", max_staleness=3, checkpoint_every=7, bf16=True)
    assert from_argv(to_argv(cfg)) == cfg


def test_checkpoints_live_beside_the_model_folder_not_inside_it():
    # The model folder is copied whole into the registry; checkpoints must not travel with it.
    assert TrainConfig("s", "d", "runs/r1/model").checkpoint_key == "runs/r1/checkpoints/model"
    assert TrainConfig("s", "d", "model").checkpoint_key == "checkpoints/model"
    assert TrainConfig("s", "d", "runs/r1/model", checkpoint_prefix="ck/r1").checkpoint_key == "ck/r1"


def test_async_mode_needs_a_staleness_bound_the_workers_can_meet():
    with pytest.raises(ValueError, match=r"expected max_staleness >= num_workers - 1 = 3 in async mode, got 2"):
        config(mode="async", num_workers=4, max_staleness=2).validate()


def test_invalid_config_says_what_was_expected():
    with pytest.raises(ValueError, match=r"expected optimizer in \('sgd', 'adam', 'adamw'\), got 'lbfgs'"):
        config(optimizer="lbfgs").validate()
    # A misspelt preset fails where the step validates it, not later in the pods.
    with pytest.raises(ValueError, match=r"expected augment in \('auto', 'none', 'digits', 'photos'\), got 'flip'"):
        config(augment="flip").validate()


def test_training_report_draws_both_curves_and_the_table():
    from components.training.report import training_report

    history = [{"epoch": i, "loss": 1 / i, "train_accuracy": 0.5 + i / 10, "val_loss": 1.1 / i, "val_accuracy": 0.4 + i / 10,
                "comm_fraction": 0.2, "seconds": 1.0} for i in (1, 2, 3)]
    page = training_report(history, {"arch": "small_cnn", "store_uri": "/secret/path"})
    assert page.count("<svg") == 2 and page.count("<polyline") == 4
    assert "best validation accuracy <b>0.7000</b> at epoch 3" in page
    assert "arch=small_cnn" in page and "/secret/path" not in page


# --- checkpoints ---------------------------------------------------------------------------------

SHAPE = {"arch": "small_cnn", "num_ps": 2, "num_workers": 2, "batch_size": 32, "mode": "sync", "epochs": 2, "seed": 0}


def write_checkpoint(store, step: int, committed: bool = True, shape: dict | None = None) -> None:
    files = {name: checkpoint.write_part(store, "ck", step, name, {"step": step, "x": torch.full((3,), float(step))})
             for name in ("ps0.pt", "ps1.pt", checkpoint.WORKER_FILE)}
    if committed:
        checkpoint.commit(store, "ck", checkpoint.Commit(step, shape or SHAPE, files))


def test_the_latest_checkpoint_is_the_newest_one_with_a_commit_record(tmp_path):
    store = open_store(str(tmp_path))
    assert checkpoint.latest(store, "ck", SHAPE) is None
    write_checkpoint(store, 10)
    write_checkpoint(store, 20, committed=False)  # a rank died while writing step 20
    record = checkpoint.latest(store, "ck", SHAPE)
    assert record.step == 10
    assert torch.equal(checkpoint.read_part(store, "ck", record, "ps1.pt")["x"], torch.full((3,), 10.0))


def test_only_the_two_newest_committed_checkpoints_are_kept(tmp_path):
    store = open_store(str(tmp_path))
    write_checkpoint(store, 5, committed=False)
    for step in (10, 20, 30):
        write_checkpoint(store, step)
    folders = sorted({key.split("/")[1] for key in store.list("ck")})
    assert folders == ["step-00000020", "step-00000030"]
    assert checkpoint.committed_steps(store, "ck") == [20, 30]


def test_a_checkpoint_of_a_differently_shaped_job_is_refused(tmp_path):
    store = open_store(str(tmp_path))
    write_checkpoint(store, 10)
    with pytest.raises(TrainingError, match=r"differently shaped job \(num_ps: checkpoint 2, this job 1\)"):
        checkpoint.latest(store, "ck", {**SHAPE, "num_ps": 1})


def test_a_damaged_checkpoint_file_fails_loudly(tmp_path):
    store = open_store(str(tmp_path))
    write_checkpoint(store, 10)
    store.write_bytes("ck/step-00000010/ps0.pt", b"garbage")
    record = checkpoint.latest(store, "ck", SHAPE)
    with pytest.raises(TrainingError, match="ck/step-00000010/ps0.pt does not match its commit record"):
        checkpoint.read_part(store, "ck", record, "ps0.pt")


class NotATensor:
    pass


def test_checkpoint_files_are_read_without_unpickling_objects():
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.decode(checkpoint.encode({"payload": NotATensor()}))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_a_shard_restored_from_its_snapshot_continues_exactly_like_the_original(optimizer):
    cfg = config(num_workers=1, optimizer=optimizer, lr=0.05, weight_decay=0.01)
    grads = [torch.randn(50, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    original = SyncShard(torch.randn(50, generator=torch.Generator().manual_seed(9)), cfg, total_steps=6, warmup_steps=2)
    for g in grads[:3]:
        original.push_pull(0, g, original.step)
    restored = SyncShard(torch.zeros(50), cfg, total_steps=6, warmup_steps=2)
    restored.load_state(checkpoint.decode(original.snapshot()))
    for g in grads[3:]:
        expected, _ = original.push_pull(0, g, original.step).wait()
        got, version = restored.push_pull(0, g, restored.step).wait()
        assert torch.equal(got, expected)  # parameters, optimizer moments and LR schedule all resumed
    assert version == original.step == 6


# --- asynchronous mode ---------------------------------------------------------------------------


def async_shard(num_workers: int, max_staleness: int) -> AsyncShard:
    cfg = config(mode="async", num_workers=num_workers, max_staleness=max_staleness, optimizer="sgd", lr=0.1, momentum=0.0)
    return AsyncShard(torch.zeros(2), cfg, total_steps=1000, warmup_steps=1)


def test_async_shard_applies_each_gradient_at_once_and_answers_with_the_new_version():
    shard = async_shard(num_workers=2, max_staleness=1)
    params, version = shard.push_pull(1, torch.tensor([1.0, 0.0]), 0).wait()  # no waiting for worker 0
    assert version == 1 and torch.allclose(params, torch.tensor([-0.1, 0.0]))


def test_async_shard_drops_a_gradient_staler_than_the_bound_and_refreshes_its_worker():
    shard = async_shard(num_workers=3, max_staleness=2)
    for worker in (1, 2, 1):  # three updates while worker 0 computes on version 0
        shard.push_pull(worker, torch.ones(2), shard.step)
    before = shard.param.detach().clone()
    params, version = shard.push_pull(0, torch.full((2,), 100.0), 0).wait()  # staleness 3 > 2
    assert torch.equal(params, before) and version == 3  # not applied; fresh parameters instead
    assert (shard.applied, shard.dropped) == (3, 1)
    shard.push_pull(0, torch.ones(2), 1)  # staleness 2: within the bound, applied
    assert (shard.applied, shard.max_applied_staleness) == (4, 2)


@settings(max_examples=60, deadline=None)
@given(num_workers=st.integers(1, 5), max_staleness=st.integers(0, 6), schedule=st.lists(st.integers(0, 4), max_size=80))
def test_no_gradient_staler_than_the_bound_is_ever_applied(num_workers, max_staleness, schedule):
    """Any interleaving of pushes: applied iff staleness <= S, and every worker leaves with fresh parameters."""
    shard = async_shard(num_workers, max_staleness)
    versions = [0] * num_workers  # the version each worker's next gradient is computed on
    for worker in (w % num_workers for w in schedule):
        staleness, applied_before = shard.step - versions[worker], shard.applied
        params, versions[worker] = shard.push_pull(worker, torch.ones(2), versions[worker]).wait()
        assert (shard.applied > applied_before) == (staleness <= max_staleness)
        assert versions[worker] == shard.step and torch.equal(params, shard.param.detach())
    assert shard.max_applied_staleness <= max_staleness
    assert shard.applied + shard.dropped == len(schedule) == shard.step + shard.dropped


def test_async_checkpoint_barrier_lets_worker0_write_while_the_others_wait():
    barrier = CheckpointBarrier(num_workers=3)
    w1 = barrier.arrive(1, 40)
    w0 = barrier.arrive(0, 40)
    assert not w0.done()  # worker 2 is still training
    w2 = barrier.arrive(2, 40)
    assert w0.done() and not w1.done() and not w2.done()  # worker 0 writes the checkpoint now
    barrier.release(40)
    assert w1.done() and w2.done()
    barrier.arrive(1, 80)
    with pytest.raises(ValueError, match="expected every worker at checkpoint step 80, worker 2 arrived at 60"):
        barrier.arrive(2, 60)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_on_a_terminal_and_stays_off_a_pipe(monkeypatch):
    from components.training.local import PROGRESS_TTY_ENV, ProgressBar

    terminal = _Terminal()
    bar = ProgressBar.for_output(terminal)
    bar.update("@progress 2 11 22 0.5000")
    assert "epoch 2 [###############...............] 11/22 loss 0.5000" in terminal.getvalue()
    monkeypatch.delenv(PROGRESS_TTY_ENV, raising=False)
    assert ProgressBar.for_output(io.StringIO()) is None  # a pipe, and nobody asked for a terminal bar
