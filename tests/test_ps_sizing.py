"""The PS sizing model of ``benchmarks/ps_sizing.py``: its arithmetic, checked against numbers worked by hand.

The model sizes clusters this machine cannot run, so its only honest checks here are exact ones: each
phase's time from bytes and bandwidth, the serial step, the smallest shard count found by search against
its closed form, and this code's whole-tensor layout never beating its largest tensor. (How well the model
predicts the real engine is the benchmark's own table (a); it is not a unit test.)
"""

from __future__ import annotations

import math

import pytest
from torch import nn

from benchmarks.ps_sizing import (
    BF16,
    FP32,
    GBIT,
    Network,
    UpdateCost,
    even_shards,
    even_split_shards,
    layout_shards,
    ps_nic_seconds,
    smallest_shards,
    step_time,
    worker_nic_seconds,
)

NET = Network.gbps(25)  # 3.125e9 bytes/s each way on every node


def test_one_phase_is_bytes_over_the_slower_nic_plus_latency():
    # 10M values of fp32 = 40 MB: 12.8 ms through a 25 Gbps worker NIC.
    assert worker_nic_seconds(10_000_000, FP32, NET) == pytest.approx(0.0128)
    assert worker_nic_seconds(10_000_000, BF16, NET) == pytest.approx(0.0064)
    # 8 workers into one shard holding all 10M: 8x the bytes through one PS NIC.
    assert ps_nic_seconds([10_000_000], 8, FP32, NET) == pytest.approx(8 * 0.0128)
    # The busiest shard sets the PS side.
    assert ps_nic_seconds([2_000_000, 8_000_000], 2, FP32, NET) == pytest.approx(2 * 8e6 * 4 / (25 * GBIT))

    step = step_time(0.050, [10_000_000], 8, Network.gbps(25, latency_s=0.001))
    assert step.push_s == step.pull_s == pytest.approx(8 * 0.0128 + 0.001)
    assert step.bottleneck == "PS NIC"


def test_a_step_is_serial_unless_overlapped_and_the_update_scales_with_workers():
    update = UpdateCost(sum_s_per_value=1e-9, apply_s_per_value=4e-9)
    step = step_time(0.050, even_shards(10_000_000, 8), 8, NET, FP32, update)
    # Eight shards: each PS NIC carries 8 x 1.25M values, exactly a worker's 10M: the worker NIC floor.
    assert step.ps_nic_s == pytest.approx(step.worker_nic_s)
    assert step.bottleneck == "worker NIC"
    assert step.update_s == pytest.approx(1_250_000 * (8 * 1e-9 + 4e-9))
    assert step.seconds == pytest.approx(0.050 + 2 * 0.0128 + step.update_s)
    assert step.busy == pytest.approx(0.050 / step.seconds)

    overlapped = step_time(0.050, even_shards(10_000_000, 8), 8, NET, FP32, update, overlapped=True)
    assert overlapped.seconds == pytest.approx(0.050)  # communication hides under a longer compute


@pytest.mark.parametrize("workers", [1, 2, 7, 8, 9, 32, 128])
@pytest.mark.parametrize("ps_gbps", [25, 50, 100])
def test_the_search_for_the_smallest_even_split_matches_its_closed_form(workers, ps_gbps):
    net = Network.gbps(25, ps_gbps)
    found = smallest_shards(lambda p: even_shards(1e7, p), workers, net, max_shards=256)
    assert found == even_split_shards(workers, net) == max(1, math.ceil(workers * 25 / ps_gbps))
    # One shard fewer would leave the PS NIC the bottleneck.
    if found > 1:
        assert ps_nic_seconds(even_shards(1e7, found - 1), workers, FP32, net) > worker_nic_seconds(1e7, FP32, net)


def _model() -> nn.Module:
    # 4,000,101 values in 4 tensors (3M, 1M, 100, 1); the largest is 75% of them.
    return nn.Sequential(nn.Linear(1000, 3000, bias=False), nn.Linear(1000, 1000, bias=False), nn.Linear(100, 1))


def test_whole_tensor_shards_never_beat_the_largest_tensor():
    model = _model()
    values = sum(p.numel() for p in model.parameters())
    for shards in range(1, 5):
        sizes = layout_shards(model, shards)
        assert sum(sizes) == values and len(sizes) == shards
        assert max(sizes) >= 3_000_000
    # With 2 workers an even split needs 2 shards; whole tensors never get there: the 3M tensor alone
    # brings 2 x 3M values to one PS NIC against a worker's 4M.
    assert even_split_shards(2, NET) == 2
    assert smallest_shards(lambda p: layout_shards(model, p), 2, NET, max_shards=4) is None
    # With one worker any layout is already at the worker NIC floor.
    assert smallest_shards(lambda p: layout_shards(model, p), 1, NET, max_shards=4) == 1


def test_impossible_sizes_are_refused_with_what_was_expected():
    with pytest.raises(ValueError, match="at least 1 shard, got 0"):
        even_shards(1e6, 0)
    with pytest.raises(ValueError, match="at least 1 worker, got 0"):
        step_time(0.01, [1e6], 0, NET)
