"""The ONNX runtime: each pushed version exported and parity-checked on the test split, the runtime a server
picks, and the predictor answering the same through both runtimes over HTTP.

The tests on a trained model use the small CNN the training tests train through the local launcher (the
session's uninterrupted run); the others export seeded random networks, which the parity check treats no differently.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper

from components import export
from components.data.prepare import DatasetInfo
from components.errors import ModelFormatError
from components.export import EXPORTER, MIN_AGREEMENT, OPSET, PARITY_TOLERANCE, check_parity, export_onnx
from components.modelfile import MANIFEST_FILE, ONNX_FILE, WEIGHTS_FILE, load_model, sha256_file
from components.push.push import push_model
from components.registry import Registry
from components.runtimes import (
    ONNX,
    TORCH,
    OnnxRuntime,
    TorchRuntime,
    choose_runtime,
    decide_runtime,
    export_passed,
    load_runtime,
    onnx_session,
)
from components.store import Store, open_store
from pipelines.registry_cli import main as registry_main
from serving.client import infer_v2, model_metadata, predict_v1, v2_classes, v2_output
from serving.model import ImageClassifier
from tests.conftest import SERVED_MODEL, free_port, make_version_folder, ready_server, start_predictor
from tests.helpers import load_split

NAME = "onnx-digits"  # its own registry name in the shared prepared store
VERDICT = {"decision": "accepted", "reason": "test"}


def digit_batches(info: DatasetInfo, split: str = "test", size: int = 64) -> Iterator[np.ndarray]:
    images, _ = load_split(info, split)
    return (images[i : i + size] for i in range(0, len(images), size))


def upload_version(store: Store, folder: Path, prefix: str) -> str:
    """A model folder as the training step leaves it in the store (no manifest: push writes that)."""
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    for path in folder.iterdir():
        store.upload_file(f"{prefix}/{path.name}", path)
    return prefix


# -- a trained model -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(uninterrupted) -> str:
    """The store prefix of a small CNN trained on the bundled digits (two epochs; the training tests' run)."""
    return uninterrupted[0].output_prefix


@pytest.fixture(scope="module")
def exported(prepared: DatasetInfo, trained: str) -> tuple[Registry, int, str]:
    """The trained model pushed with the prepared data set: (registry, version, what push printed)."""
    store, printed = open_store(prepared.store_uri), io.StringIO()
    with contextlib.redirect_stdout(printed):
        pushed = push_model(store, NAME, trained, {"accuracy": 0.9}, VERDICT, {"run_id": "onnx"}, dataset_prefix=prepared.prefix)
    return Registry(store, NAME), pushed.version, printed.getvalue()


@pytest.mark.slow
def test_push_exports_a_trained_model_that_passes_parity_and_hashes_the_file(exported, prepared, tmp_path, capsys):
    registry, version, printed = exported
    manifest = registry.manifest(version)
    record = manifest["onnx"]
    assert (record["passed"], record["file"], record["exporter"], record["opset"]) == (True, ONNX_FILE, EXPORTER, OPSET)
    parity = record["parity"]
    assert parity["images"] == prepared.counts["test"] and parity["passed"]
    assert parity["agreement"] >= MIN_AGREEMENT and 0.0 <= parity["max_abs_diff"] <= parity["tolerance"] == PARITY_TOLERANCE
    folder = tmp_path / "v"
    registry.download(version, folder)  # verifies every listed file's SHA-256
    assert manifest["files"][ONNX_FILE]["sha256"] == sha256_file(folder / ONNX_FILE)
    assert f"{ONNX_FILE} added (opset {OPSET}): parity on {parity['images']} test images, classes agree on 1.0000" in printed
    assert export_passed(manifest)  # what auto and --runtime onnx go by
    assert registry_main(["registry", "show", "--store", registry.store.uri, "--model", NAME, "--version", str(version)]) == 0
    assert f"  onnx        {ONNX_FILE} (opset {OPSET}): parity on {parity['images']} test images" in capsys.readouterr().out


@pytest.mark.slow
def test_both_runtimes_answer_alike_at_any_batch_size(exported, prepared, tmp_path):
    registry, version, _ = exported
    folder = tmp_path / "v"
    registry.download(version, folder)
    _, card = load_model(folder)
    torch_rt, onnx_rt = (load_runtime(folder, card, kind, "cpu", threads=1) for kind in (TORCH, ONNX))
    assert onnx_rt.providers == ["CPUExecutionProvider"]
    images, _ = load_split(prepared, "test")
    for n in (1, 5, 64):  # the batch axis is dynamic: not the example size the exporter traced with
        pixels = images[:n].astype(np.float32)
        expected, got = torch_rt.forward(pixels), onnx_rt.forward(pixels)
        assert got.shape == expected.shape == (n, card.num_classes) and got.dtype == np.float32
        assert (got.argmax(1) == expected.argmax(1)).all()
        np.testing.assert_allclose(got, expected, atol=PARITY_TOLERANCE, rtol=0)


@pytest.mark.slow
def test_the_predictor_answers_alike_through_both_runtimes_over_http(exported, prepared, tmp_path):
    registry, version, _ = exported
    uri, ports = registry.version_uri(version), {"torch": free_port(), "onnx": free_port()}
    logs = {runtime: tmp_path / f"{runtime}.log" for runtime in ports}
    procs = {runtime: start_predictor(uri, port, "--runtime", runtime, "--workers", "1", log=logs[runtime]) for runtime, port in ports.items()}
    images = load_split(prepared, "test")[0][:8].astype(np.float32)
    with ready_server(procs["torch"], ports["torch"], logs["torch"]) as eager, ready_server(procs["onnx"], ports["onnx"], logs["onnx"]) as ort:
        answers = {url: (predict_v1(url, SERVED_MODEL, images), infer_v2(url, SERVED_MODEL, images)) for url in (eager, ort)}
        platforms = [model_metadata(url, SERVED_MODEL)["platform"] for url in (eager, ort)]
    assert platforms == ["pytorch", "onnxruntime_onnx"]  # each says which runtime answers
    (torch_v1, torch_v2), (onnx_v1, onnx_v2) = answers[eager], answers[ort]
    assert [p["class"] for p in torch_v1] == [p["class"] for p in onnx_v1] == v2_classes(torch_v2) == v2_classes(onnx_v2)
    np.testing.assert_allclose([p["probabilities"] for p in onnx_v1], [p["probabilities"] for p in torch_v1], atol=PARITY_TOLERANCE, rtol=0)
    np.testing.assert_allclose(v2_output(onnx_v2, "probabilities"), v2_output(torch_v2, "probabilities"), atol=PARITY_TOLERANCE, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["auto", "torch", "onnx"])
def test_the_load_line_names_the_runtime_and_why(exported, caplog, runtime):
    registry, version, _ = exported
    choice = decide_runtime(runtime, registry.manifest(version))  # auto: the profile's pick, when push wrote one
    expected = f"runtime {choice.runtime} ({choice.reason})"
    model = ImageClassifier(SERVED_MODEL, registry.version_uri(version), runtime=runtime, threads=1)
    with caplog.at_level(logging.INFO, logger="serving.model"):
        assert model.load()
    model.stop()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded")]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the device the server picks
    assert f"; small_cnn on {device}, {expected}; batching" in line


# -- exports that must not be kept ------------------------------------------------------------------------------


def test_the_parity_check_catches_an_export_that_answers_differently(tmp_path):
    folder = make_version_folder(tmp_path / "v", seed=0)
    net, card = load_model(folder)
    other, _ = load_model(make_version_folder(tmp_path / "other", seed=1))
    pixels = np.random.default_rng(0).integers(0, 256, (300, 1, 28, 28), dtype=np.uint8)
    record = export_onnx(net, card, folder, [pixels[:128], pixels[128:]], limit=200)
    assert record["passed"] and record["parity"]["images"] == 200  # capped at the limit
    session = onnx_session(folder / ONNX_FILE, "cpu", threads=1)
    parity = check_parity(OnnxRuntime(session), TorchRuntime(other, card), [pixels])
    assert not parity["passed"] and parity["max_abs_diff"] > PARITY_TOLERANCE
    assert parity["error"].startswith(f"parity failed on 300 test images: classes agree on {parity['agreement']:.4f} (expected ≥ 0.999), ")


def perturbing(write_onnx):
    """``write_onnx`` that scales the exported weight matrices by 1.5 afterwards: an export that mistranslated
    the network. The real exporter translates these networks faithfully, so the mistake is made here, at the
    one call into torch.onnx."""

    def write(net: torch.nn.Module, card, path: Path) -> None:
        write_onnx(net, card, path)
        model = onnx.load(str(path))
        for tensor in model.graph.initializer:
            weights = numpy_helper.to_array(tensor)
            if weights.dtype == np.float32 and weights.ndim == 2:
                tensor.CopyFrom(numpy_helper.from_array(weights * 1.5, tensor.name))
        onnx.save(model, str(path))

    return write


def test_a_mismatched_export_is_recorded_without_its_file_and_the_version_keeps_pytorch(prepared, tmp_path, monkeypatch, capsys):
    store, name = open_store(prepared.store_uri), "onnx-mismatch"
    prefix = upload_version(store, make_version_folder(tmp_path / "model"), "runs/onnx-mismatch/model")
    monkeypatch.setattr(export, "write_onnx", perturbing(export.write_onnx))
    pushed = push_model(store, name, prefix, {}, VERDICT, {}, dataset_prefix=prepared.prefix)
    manifest = Registry(store, name).manifest(pushed.version)
    record = manifest["onnx"]
    assert not record["passed"] and record["error"].startswith(f"parity failed on {prepared.counts['test']} test images")
    assert record["parity"]["max_abs_diff"] > PARITY_TOLERANCE
    assert ONNX_FILE not in manifest["files"] and WEIGHTS_FILE in manifest["files"]
    assert f"no {ONNX_FILE}: parity failed on" in capsys.readouterr().out
    assert registry_main(["registry", "show", "--store", store.uri, "--model", name, "--version", str(pushed.version)]) == 0
    assert f"  onnx        none: parity failed on {prepared.counts['test']} test images" in capsys.readouterr().out
    assert decide_runtime("auto", manifest).runtime == TORCH
    with pytest.raises(ModelFormatError, match=rf"--runtime onnx: version {pushed.version} has no ONNX export that passed its "
                                               r"parity check \(the export failed: parity failed on"):
        choose_runtime("onnx", manifest)


class ExportRefused(torch.nn.Module):
    """A layer with no export path: it raises while being exported, as an unsupported operator does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            raise NotImplementedError("no export path for this layer")
        return x.flatten(1)


def test_an_exporter_error_is_a_failed_export_not_a_crash(tmp_path):
    folder = make_version_folder(tmp_path / "v")
    _, card = load_model(folder)
    record = export_onnx(ExportRefused(), card, folder, [np.zeros((2, 1, 28, 28), np.uint8)])
    assert record == {"passed": False, "exporter": EXPORTER,
                      "error": "the exporter failed: NotImplementedError: no export path for this layer"}
    assert not (folder / ONNX_FILE).exists()


def test_a_push_without_a_data_set_records_why_it_has_no_export(tmp_path):
    store = open_store(str(tmp_path / "store"))
    prefix = upload_version(store, make_version_folder(tmp_path / "model"), "runs/r1/model")
    pushed = push_model(store, NAME, prefix, {}, VERDICT, {})
    manifest = Registry(store, NAME).manifest(pushed.version)
    assert manifest["onnx"] == {"passed": False, "exporter": EXPORTER, "error": "no test split to check parity on (no data set given)"}
    assert ONNX_FILE not in manifest["files"]


# -- which runtime a server picks ------------------------------------------------------------------------------

EXPORTED = {"version": 3, "onnx": {"passed": True, "file": ONNX_FILE}, "files": {ONNX_FILE: {}, WEIGHTS_FILE: {}}}
NOT_EXPORTED = {"version": 3, "onnx": {"passed": False, "error": "no test split to check parity on (no data set given)"},
                "files": {WEIGHTS_FILE: {}}}


@pytest.mark.parametrize(
    ("manifest", "expected", "why"),
    [
        (EXPORTED, ONNX, "the ONNX export passed its parity check and no profile names a faster runtime"),
        ({**EXPORTED, "profile": {"runtime": TORCH}}, TORCH, "the version's profile measured torch faster"),
        ({**EXPORTED, "profile": {"runtime": ONNX}}, ONNX, "the version's profile measured onnx faster"),
        ({**EXPORTED, "profile": {"runtime": None}}, ONNX, "no profile names a faster runtime"),
        (NOT_EXPORTED, TORCH, "no ONNX export to run (the export failed: no test split"),
        ({"version": 3, "files": {WEIGHTS_FILE: {}}}, TORCH, "none was recorded: pushed before exports existed"),
        ({**NOT_EXPORTED, "profile": {"runtime": ONNX}}, TORCH, "no ONNX export to run"),  # a profile cannot conjure a file
        ({**EXPORTED, "files": {WEIGHTS_FILE: {}}}, TORCH, "model.onnx is not among the version's files"),
    ],
)
def test_auto_takes_the_profiles_runtime_else_a_passing_export_else_torch(manifest, expected, why):
    choice = decide_runtime("auto", manifest)
    assert choose_runtime("auto", manifest) == choice.runtime == expected
    assert why in choice.reason


def test_auto_keeps_pytorch_on_a_gpu_this_onnxruntime_cannot_use():
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    choice = decide_runtime("auto", {**EXPORTED, "profile": {"runtime": ONNX}}, device="cuda")
    assert (choice.runtime, choice.reason) == (TORCH, "auto: this onnxruntime has no CUDAExecutionProvider, and PyTorch runs on the GPU")
    assert choose_runtime(ONNX, EXPORTED, device="cuda") == ONNX  # asked for by name: onnxruntime runs it on the CPU


def test_a_named_runtime_is_taken_as_asked_when_the_version_has_it():
    assert choose_runtime(TORCH, EXPORTED) == choose_runtime(TORCH, NOT_EXPORTED) == TORCH
    assert choose_runtime(ONNX, EXPORTED) == ONNX
    with pytest.raises(ModelFormatError, match=r"^--runtime onnx: version 3 has no ONNX export that passed its parity check \(the "
                                               r"export failed: no test split .*\); serve it with --runtime torch or auto$"):
        choose_runtime(ONNX, NOT_EXPORTED)
    with pytest.raises(ValueError, match="expected a runtime in"):
        choose_runtime("tensorrt", EXPORTED)


def test_serving_onnx_from_a_version_without_an_export_exits_with_one_clear_line(tmp_path):
    folder = make_version_folder(tmp_path / "v1")
    assert "onnx" not in json.loads((folder / MANIFEST_FILE).read_text())  # a version pushed before exports existed
    proc = start_predictor(str(folder), free_port(), "--runtime", "onnx", "--workers", "1")  # one process: one refusal
    output = proc.communicate(timeout=90)[0].decode()
    assert proc.returncode == 2 and "Traceback" not in output
    refusals = [line for line in output.splitlines() if "refusing to serve" in line]
    assert len(refusals) == 1 and refusals[0].endswith(
        f"refusing to serve {folder}: --runtime onnx: version 1 has no ONNX export that passed its parity check "
        "(none was recorded: pushed before exports existed); serve it with --runtime torch or auto")
