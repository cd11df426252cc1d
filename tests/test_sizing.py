"""Sizing the predictor from a version's profile: memory, CPU and the autoscaling target, each with its source."""

from __future__ import annotations

from typing import Any

import pytest

from components.deploy.sizing import Sized, SizingOverrides, derive_resources, memory_quantity
from tests.helpers import sample_profile as profile


def test_memory_cpu_and_target_are_derived_from_the_chosen_runtime_with_their_figures() -> None:
    sizing = derive_resources(profile(), origin="profile v7")

    # two CPUs: two server processes, each holding the model, and the supervisor that holds none
    assert sizing.memory == Sized("2560Mi", "profile v7: 2 server processes (one per CPU) × peak RSS 612 MiB + their supervisor "
                                            "300 MiB (onnx) ×1.5 = 2286 MiB, rounded up to 2560Mi")
    assert sizing.scale_target == Sized(8, "profile v7: highest concurrency with p99 within 50 ms (onnx: p99 12.5 ms at 8)")
    # 1500 req/s × 0.9 ms = 1.35 cores busy at the target concurrency: two whole cores
    assert sizing.cpu == Sized("2", "profile v7: 1500 req/s × 0.90 ms server CPU per request at concurrency 8 (onnx) "
                                    "= 1.35 cores, whole cores, at least 1")
    assert sizing.settings_fields() == {"cpu": "2", "memory": "2560Mi", "scale_target": 8}


def test_a_cheap_model_gets_one_whole_cpu_and_the_memory_of_its_one_server_process() -> None:
    cheap = profile()
    for row in cheap["runtimes"]["onnx"]["served"]:
        row["cpu_ms"] = 0.1

    sizing = derive_resources(cheap, origin="profile v7")

    assert sizing.cpu.value == "1"
    assert sizing.memory == Sized("1Gi", "profile v7: peak RSS 612 MiB (onnx) ×1.5 = 918 MiB, rounded up to 1Gi")


def test_a_cpu_override_sizes_the_memory_of_the_processes_it_implies() -> None:
    assert derive_resources(profile(), SizingOverrides(cpu="500m")).memory.value == "1Gi"  # one process
    assert derive_resources(profile(), SizingOverrides(cpu="4")).memory.value == "4608Mi"  # (4 × 612 + 300) × 1.5 = 4122 MiB


@pytest.mark.parametrize(("mib", "quantity"), [(10, "256Mi"), (300, "384Mi"), (1024, "1Gi"), (1025, "1536Mi"), (3000, "3Gi")])
def test_memory_is_rounded_up_to_128mi_below_1gi_and_512mi_above(mib: float, quantity: str) -> None:
    assert memory_quantity(mib) == quantity


def test_an_operator_override_wins_and_says_so() -> None:
    sizing = derive_resources(profile(), SizingOverrides(cpu="500m", scale_target=20))

    assert sizing.cpu == Sized("500m", "operator override")
    assert sizing.scale_target == Sized(20, "operator override")
    # not overridden: still derived, for the one server process half a CPU runs
    assert sizing.memory.value == "1Gi" and sizing.memory.source.startswith("profile: peak RSS 612 MiB")


def test_without_a_profile_the_defaults_are_used_and_said_so() -> None:
    sizing = derive_resources(None)

    assert sizing.settings_fields() == {"cpu": "1", "memory": "2Gi", "scale_target": 8}
    assert {sized.source for sized in (sizing.cpu, sizing.memory, sizing.scale_target)} == {"default: no profile"}


def test_when_no_concurrency_met_the_budget_one_request_per_replica_is_the_target() -> None:
    slow = profile(within_budget=None)

    target = derive_resources(slow, origin="profile v3").scale_target

    assert target == Sized(1, "profile v3: no concurrency kept p99 within 50 ms (onnx: p99 4.0 ms at concurrency 1), so 1")


def test_standard_mode_keeps_the_cpu_utilization_target_the_profile_does_not_measure() -> None:
    sizing = derive_resources(profile(), scale_metric="cpu")

    assert sizing.scale_target == Sized(70, "default: the profile measures concurrency, not cpu")
    assert sizing.memory.value == "2560Mi"  # resources are still the profile's


def test_a_profile_without_its_chosen_runtimes_measurements_is_refused_by_name() -> None:
    broken = profile()
    del broken["runtimes"]["onnx"]

    with pytest.raises(ValueError, match=r"expected profile v2 to hold the measurements .* of its chosen runtime 'onnx', found runtimes \['torch'\]"):
        derive_resources(broken, origin="profile v2")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"cpu": "two"}, "expected serving_cpu as a Kubernetes CPU quantity like '2', '1.5' or '500m'"),
    ({"memory": "1GB"}, "expected serving_memory as a Kubernetes memory quantity like '1Gi' or '768Mi'"),
    ({"scale_target": -1}, "expected serving_scale_target >= 1"),
])
def test_malformed_overrides_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SizingOverrides(**overrides)


def test_a_gpu_pod_sized_from_a_profile_measured_without_a_gpu_gets_at_least_the_default_memory() -> None:
    cheap = profile()
    for row in cheap["runtimes"]["onnx"]["served"]:
        row["cpu_ms"] = 0.1  # one CPU: one server process, 918 MiB with headroom

    memory = derive_resources(cheap, gpus=1, origin="profile v7").memory

    assert memory == Sized("2Gi", "profile v7: peak RSS 612 MiB (onnx) ×1.5 = 918 MiB, rounded up to 1Gi; measured without a GPU, "
                                  "so raised to 2Gi for the CUDA context a GPU pod adds")
    cheap["machine"]["device"] = "cuda (NVIDIA H100 80GB HBM3)"
    assert derive_resources(cheap, gpus=1).memory.value == "1Gi"  # measured with the GPU: its context is in the peak
