"""The profile of a model version: each runtime loaded in its own process, served by the real predictor over
HTTP on loopback, measured; the faster one chosen. Everything runs for real (short levels keep it quick)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from components.data.prepare import DatasetInfo
from components.export import export_onnx
from components.modelfile import ONNX_FILE, ModelCard, save_model
from components.nets import build_model
from components.presets import normalize
from components.profile import (
    ProfileError,
    ProfileSettings,
    choose_runtime,
    profile_runtime,
    profile_version,
    provisional_version,
    request_body,
    within_budget,
)
from components.registry import Registry
from components.store import open_store
from pipelines.cli import main
from tests.helpers import load_split, sample_profile

QUICK = ProfileSettings(latency_budget_ms=500.0, concurrencies=(1, 4), seconds_per_level=0.5, warmup_s=0.1, forward_s=0.2)
LEVEL_KEYS = {"concurrency", "rps", "p50_ms", "p99_ms", "cpu_ms", "errors"}


def train_small(prepared: DatasetInfo, folder: Path, images: int = 640) -> tuple[torch.nn.Module, ModelCard]:
    """The small CNN trained briefly (one pass over ``images`` training images: what it costs to serve does not
    depend on how well it learned) on the bundled digits, saved as a version folder (no manifest)."""
    pixels, labels = (part[:images] for part in load_split(prepared, "train"))
    card = ModelCard("small_cnn", 1, 28, 28, list(prepared.class_names), list(prepared.mean), list(prepared.std))
    torch.manual_seed(0)
    net = build_model(card.arch, card.in_channels, card.num_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    images, targets = torch.from_numpy(pixels).float(), torch.from_numpy(labels)
    for start in range(0, len(images), 64):
        loss = F.cross_entropy(net(normalize(images[start:start + 64], card.mean, card.std)), targets[start:start + 64])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_model(folder, net.eval(), card)
    return net, card


@pytest.fixture(scope="module")
def exported(prepared: DatasetInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained version folder whose ONNX export passed its parity check on the test split."""
    folder = tmp_path_factory.mktemp("exported")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a small shared machine more threads spin against each other: ten times slower
    try:
        net, card = train_small(prepared, folder)
        record = export_onnx(net, card, folder, [load_split(prepared, "test")[0]])
    finally:
        torch.set_num_threads(threads)
    assert record["passed"], record
    return folder


@pytest.fixture(scope="module")
def both(exported: Path) -> dict[str, Any]:
    return profile_version(exported, QUICK)


def check_runtime(measured: dict[str, Any]) -> None:
    assert measured["load_s"] > 0 and measured["peak_rss_mib"] > measured["base_rss_mib"] > 0
    assert set(measured["forward_ips"]) == {"1", "64"} and min(measured["forward_ips"].values()) > 0
    assert [row["concurrency"] for row in measured["served"]] == [1, 4]
    for row in measured["served"]:
        assert set(row) == LEVEL_KEYS
        assert row["rps"] > 0 and row["cpu_ms"] > 0 and row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert measured["within_budget"] in (None, 1, 4)


def test_a_version_with_an_onnx_export_is_profiled_on_both_runtimes_and_the_faster_chosen(both: dict[str, Any]) -> None:
    assert set(both["runtimes"]) == {"torch", "onnx"}
    for measured in both["runtimes"].values():
        check_runtime(measured)
    assert both["runtime"] in both["runtimes"]
    assert both["runtime"] == choose_runtime(both["runtimes"], 64)
    assert (both["latency_budget_ms"], both["max_batch"], both["format"]) == (500.0, 64, 1)
    assert both["machine"]["cores"] >= 1 and both["machine"]["threads"] >= 1 and both["machine"]["cpu"]
    assert len(json.dumps(both)) < 1500  # it lives in every manifest: a few hundred bytes per runtime


def test_a_version_without_an_onnx_export_is_profiled_on_torch_only(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "torch-only"
    folder.mkdir()
    for path in exported.iterdir():
        if path.name != ONNX_FILE:
            (folder / path.name).write_bytes(path.read_bytes())

    profile = profile_version(folder, QUICK)

    assert list(profile["runtimes"]) == ["torch"] and profile["runtime"] == "torch"
    check_runtime(profile["runtimes"]["torch"])
    assert not (folder / "MANIFEST.json").exists()  # the version's own manifest is push's to write, later


def test_a_runtime_that_cannot_load_fails_the_profile_with_its_servers_log(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for path in exported.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / ONNX_FILE).write_bytes(b"not an onnx graph")
    version = provisional_version(folder, tmp_path / "served")
    card = ModelCard.from_json((folder / "model.json").read_text())

    with pytest.raises(ProfileError, match=r"(?s)runtime onnx: the profiling server exited with code 1 before it was ready; "
                                           r"its log ends:\n.*onnxruntime cannot load"):
        profile_runtime(version, "onnx", request_body(card), QUICK, tmp_path)


def level(concurrency: int, rps: float, p99_ms: float, errors: int = 0) -> dict[str, Any]:
    return {"concurrency": concurrency, "rps": rps, "p50_ms": p99_ms / 2, "p99_ms": p99_ms, "cpu_ms": 0.5, "errors": errors}


def test_within_budget_is_the_highest_concurrency_answered_in_time_without_errors() -> None:
    served = [level(1, 400, 5), level(8, 900, 40), level(32, 1000, 90, errors=2), level(64, 1000, 300)]

    assert within_budget(served, 100) == 8  # 32 was in time, but with errors
    assert within_budget(served, 1) is None


def measured(served_rps: float, forward_max: float, p99_ms: float = 10) -> dict[str, Any]:
    served = [level(1, served_rps / 2, p99_ms), level(8, served_rps, p99_ms)]
    return {"served": served, "within_budget": within_budget(served, 50), "forward_ips": {"1": 1.0, "64": forward_max}}


def test_the_runtime_serving_more_within_the_budget_is_chosen_and_the_forward_pass_breaks_a_tie() -> None:
    assert choose_runtime({"torch": measured(1000, 9000), "onnx": measured(1500, 5000)}, 64) == "onnx"
    assert choose_runtime({"torch": measured(1000, 9000), "onnx": measured(1020, 5000)}, 64) == "torch"  # within 5 %: a tie
    # requests answered only beyond the budget do not count
    assert choose_runtime({"torch": measured(1000, 1000), "onnx": measured(5000, 9000, p99_ms=80)}, 64) == "torch"


def test_registry_show_prints_the_profile_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "model.json").write_text("{}")
    store = str(tmp_path / "store")
    Registry(open_store(store), "digits").push(folder, {"profile": sample_profile()})

    main(["registry", "show", "--store", store, "--model", "digits", "--version", "1"])

    out = capsys.readouterr().out
    assert "  profile: serves onnx (p99 budget 50.0 ms; test CPU, 2 cores, 1 threads, cpu)\n" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("    onnx", "    torch"))]
    assert rows == [["onnx", "0.20", "612", "3000", "20000", "1", "400", "2.4", "4.0", "1.10", "0"],
                    ["torch", "0.20", "900", "3000", "20000", "1", "400", "2.4", "4.0", "1.10", "0"]]
    assert "8     1500     5.0    12.5   0.90      0 *" in out  # the concurrency within the budget, marked


def test_profile_settings_refuse_what_cannot_be_measured() -> None:
    with pytest.raises(ValueError, match=r"expected concurrencies of at least 1, got \(0, 4\)"):
        ProfileSettings(concurrencies=(4, 0))
    with pytest.raises(ValueError, match="expected latency_budget_ms > 0"):
        ProfileSettings(latency_budget_ms=0)
    assert ProfileSettings(concurrencies=(32, 1, 8, 8)).concurrencies == (1, 8, 32)


def test_a_request_body_is_one_v2_image_of_the_cards_shape() -> None:
    card = ModelCard("small_cnn", 1, 28, 28, ["a", "b"], [0.1], [0.2])

    (tensor,) = json.loads(request_body(card))["inputs"]

    assert tensor["shape"] == [1, 1, 28, 28] and len(tensor["data"]) == 784
    assert 0 <= min(tensor["data"]) and max(tensor["data"]) <= 255 and np.asarray(tensor["data"]).dtype.kind == "i"
