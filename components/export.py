"""Export a model version to ONNX, and keep the export only when it answers like the PyTorch model.

The exported graph is the network with normalization in front and softmax behind (:class:`ProbabilityNet`),
so onnxruntime takes the same input as the PyTorch path (pixels, 0–255) and answers the same thing
(probabilities). :func:`export_onnx` exports with ``torch.onnx``'s dynamo exporter (a dynamic batch axis), then
runs both on the test split: the predicted classes must agree on at least :data:`MIN_AGREEMENT` of the images
and no probability may differ by more than :data:`PARITY_TOLERANCE`. Only then is ``model.onnx`` written into
the version folder. Either way it returns the record the manifest keeps under ``"onnx"``; a failed export
(the exporter raised, or parity failed) is a record, not an error: the version keeps the PyTorch path.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from components.data.prepare import DATASET_FILE, read_info
from components.data.shards import iter_records, temporary_reader
from components.errors import ModelFormatError
from components.modelfile import ONNX_FILE, ModelCard, load_model
from components.presets import normalize
from components.runtimes import OnnxRuntime, Runtime, TorchRuntime, error_line, onnx_session, ort_errors
from components.store import Store, join_key

EXPORTER = "torch.onnx dynamo"
# Pinned rather than left to the exporter's default (20 in this torch), which moves between torch releases:
# versions exported by different releases stay alike, and the pinned onnxruntime runs it.
OPSET = 20
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
MIN_AGREEMENT = 0.999  # predicted classes identical on at least this fraction of the parity images
# Largest |Δ probability| accepted. The small CNN trained on the bundled digits differs by at most 6e-7 between
# eager PyTorch and onnxruntime on CPU (float32 summation order in the convolutions); 1e-4 leaves over two
# orders of magnitude for deeper networks and other CPUs, and still catches a real mistranslation, which moves
# probabilities by 1e-2 or more.
PARITY_TOLERANCE = 1e-4
PARITY_MAX_IMAGES = 10_000  # the first this many test images (in stored order): bounds push time on large splits
PARITY_BATCH = 128  # images per forward pass while checking, as evaluation streams them


class ProbabilityNet(torch.nn.Module):
    """``net`` with the card's normalization in front and softmax behind: what :func:`predict_proba` computes,
    as one module the exporter can trace."""

    def __init__(self, net: torch.nn.Module, card: ModelCard):
        super().__init__()
        self.net, self.mean, self.std = net, list(card.mean), list(card.std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.net(normalize(pixels, self.mean, self.std)).float(), dim=1)


def export_version(store: Store, dataset_prefix: str | None, folder: Path) -> dict[str, Any]:
    """Export the version in ``folder`` and check it on the test split of the prepared data set at
    ``dataset_prefix``; print one line with the outcome and return the manifest's record."""
    (folder / ONNX_FILE).unlink(missing_ok=True)  # an export is made and checked here, never carried in with the weights
    if dataset_prefix is None or not store.exists(join_key(dataset_prefix, DATASET_FILE)):
        where = "no data set given" if dataset_prefix is None else f"no {DATASET_FILE} at {store.uri}/{dataset_prefix}"
        record = failed(f"no test split to check parity on ({where})")
    else:
        info = read_info(store, dataset_prefix)
        net, card = load_model(folder)
        if list(info.image_shape) != card.input_shape:
            record = failed(f"the test split's images are {info.image_shape}, the model takes {card.input_shape}")
        else:
            with temporary_reader(store, info.prefix, info.image_shape) as reader:
                batches = (pixels for pixels, _ in iter_records(reader, info.shard_list("test"), PARITY_BATCH))
                record = export_onnx(net, card, folder, batches)
    print(describe(record))
    return record


def export_onnx(net: torch.nn.Module, card: ModelCard, folder: Path, test_pixels: Iterable[np.ndarray],
                limit: int = PARITY_MAX_IMAGES, tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Export ``net`` (on the CPU) to ONNX and check it against ``net`` on ``test_pixels`` (``uint8 [n,C,H,W]``
    batches, at most ``limit`` images used). On a pass ``model.onnx`` is in ``folder``; otherwise nothing is written."""
    net = net.eval()
    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        path = Path(tmp, ONNX_FILE)
        try:
            write_onnx(net, card, path)
        except torch.onnx.errors.OnnxExporterError as exc:
            return failed(f"the exporter failed: {error_line(exc)}")
        try:
            candidate = OnnxRuntime(onnx_session(path, "cpu", torch.get_num_threads()))
            parity = check_parity(candidate, TorchRuntime(net, card), test_pixels, limit, tolerance)
        except ModelFormatError as exc:  # onnxruntime cannot load what the exporter wrote
            return failed(str(exc))
        except ort_errors() as exc:
            return failed(f"onnxruntime failed on the test images: {error_line(exc)}")
        if not parity["passed"]:
            return failed(parity["error"], parity)
        opset = read_opset(path)
        shutil.move(path, folder / ONNX_FILE)
    return {"passed": True, "file": ONNX_FILE, "opset": opset, "exporter": EXPORTER, "torch": torch.__version__,
            "onnxruntime": _ort_version(), "parity": parity}


def write_onnx(net: torch.nn.Module, card: ModelCard, path: Path) -> None:
    """Export ``net`` with its normalization and softmax to ``path`` (one file; a dynamic batch axis)."""
    module = ProbabilityNet(net, card).eval()
    example = torch.zeros(2, *card.input_shape)  # two, not one: a batch of one invites the tracer to specialise it
    # The exporter reports every step and every fallback it considers on stdout, stderr and as warnings: the
    # outcome is what matters in a push log (describe() prints it), and an exporter error keeps its message.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
        program.save(str(path), external_data=False)


def check_parity(candidate: Runtime, reference: Runtime, test_pixels: Iterable[np.ndarray], limit: int = PARITY_MAX_IMAGES,
                 tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Run both runtimes on up to ``limit`` images of ``test_pixels`` and compare: the parity record."""
    images, agreeing, max_diff = 0, 0, 0.0
    for pixels in _capped(test_pixels, limit):
        x = pixels.astype(np.float32)  # what the predictor hands a runtime: float pixels, 0–255
        got, expected = candidate.forward(x), reference.forward(x)
        if got.shape != expected.shape:
            return _parity(images, agreeing, max_diff, limit, tolerance,
                           f"the export answers shape {list(got.shape)}, PyTorch {list(expected.shape)}")
        if not (np.isfinite(got).all() and np.isfinite(expected).all()):
            return _parity(images, agreeing, max_diff, limit, tolerance, "non-finite probabilities (NaN or inf)")
        images += len(x)
        agreeing += int((got.argmax(1) == expected.argmax(1)).sum())
        max_diff = max(max_diff, float(np.abs(got - expected).max(initial=0.0)))
    if images == 0:
        return _parity(0, 0, 0.0, limit, tolerance, "no test images to check parity on")
    agreement = agreeing / images
    if agreement < MIN_AGREEMENT or max_diff > tolerance:
        return _parity(images, agreeing, max_diff, limit, tolerance,
                       f"parity failed on {images} test images: classes agree on {agreement:.4f} (expected ≥ {MIN_AGREEMENT}), "
                       f"max |Δ probability| {max_diff:.3g} (expected ≤ {tolerance:g})")
    return _parity(images, agreeing, max_diff, limit, tolerance)


def _parity(images: int, agreeing: int, max_diff: float, limit: int, tolerance: float, error: str | None = None) -> dict[str, Any]:
    record = {"images": images, "limit": limit, "agreement": agreeing / images if images else 0.0, "min_agreement": MIN_AGREEMENT,
              "max_abs_diff": max_diff, "tolerance": tolerance, "passed": error is None}
    return record if error is None else {**record, "error": error}


def _capped(batches: Iterable[np.ndarray], limit: int) -> Iterator[np.ndarray]:
    seen = 0
    for batch in batches:
        if seen >= limit:
            return
        batch = batch[: limit - seen]
        seen += len(batch)
        if len(batch):
            yield batch


def failed(error: str, parity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest record of an export that is not kept."""
    record = {"passed": False, "exporter": EXPORTER, "error": error}
    return record if parity is None else {**record, "parity": parity}


def describe(record: dict[str, Any]) -> str:
    """The push log's one line about the export."""
    if not record["passed"]:
        return f"no {ONNX_FILE}: {record['error']}; the version keeps the PyTorch runtime only"
    return f"{ONNX_FILE} added {_parity_text(record)}"


def summary(record: dict[str, Any] | None) -> str:
    """``registry show``'s line about a version's export (``record``: the manifest's, None when it has none)."""
    if not isinstance(record, dict):
        return "not recorded (pushed before exports existed)"
    if record.get("passed") is not True:
        return f"none: {record.get('error', 'no reason recorded')}"
    return f"{ONNX_FILE} {_parity_text(record)}"


def _parity_text(record: dict[str, Any]) -> str:
    p = record["parity"]
    return (f"(opset {record['opset']}): parity on {p['images']} test images, classes agree on {p['agreement']:.4f}, "
            f"max |Δ probability| {p['max_abs_diff']:.2g} ≤ {p['tolerance']:g}")


def read_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
