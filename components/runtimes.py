"""The forward pass a model version runs: eager PyTorch, or its ONNX export under onnxruntime.

Both take the same input, ``float32 [N,C,H,W]`` pixels on the 0–255 scale, and answer class probabilities
``float32 [N,K]``: the ONNX graph holds the normalization and softmax that :func:`components.predict.predict_proba`
applies (:mod:`components.export` builds it), and push's parity check proves the two agree on the test split
before ``model.onnx`` joins a version. The predictor, the profile and the parity check all run a version
through a :class:`Runtime`, so what is measured and checked is what is served.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from components.errors import ModelFormatError
from components.modelfile import ONNX_FILE, ModelCard, load_model
from components.predict import predict_proba

if TYPE_CHECKING:
    import onnxruntime

TORCH = "torch"
ONNX = "onnx"
RUNTIMES = (TORCH, ONNX)
AUTO = "auto"
# Where the Open Inference Protocol's model metadata has a "platform", each runtime's name there
# (onnxruntime_onnx as Triton calls it; eager PyTorch has no TorchScript file, so not pytorch_libtorch).
PLATFORMS = {TORCH: "pytorch", ONNX: "onnxruntime_onnx"}
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
# Spinning lets an idle intra-op thread busy-wait for the next parallel section instead of sleeping. Between
# batches a served pod's forward threads are idle and the event loop needs the core: measured at 2 threads on
# 2 cores beside a Python thread doing request-sized work, spinning off gave ~30% more forward images/s, the
# same loop throughput and ~15% less CPU (three alternated rounds of 3 s on a shared machine). At 1 thread
# there is no pool to spin. So off.
ALLOW_SPINNING = "0"


class Runtime(Protocol):
    """Pixels (``float32 [N,C,H,W]``, 0–255) in, class probabilities (``float32 [N,K]``) out."""

    name: str

    def forward(self, pixels: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class TorchRuntime:
    """Eager PyTorch: the network and :func:`predict_proba`, the path training and evaluation use."""

    name = TORCH

    def __init__(self, net: torch.nn.Module, card: ModelCard):
        self.net, self.card = net, card

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        return predict_proba(self.net, torch.from_numpy(pixels), self.card).numpy()

    def close(self) -> None:
        self.net = None  # the weights go with the last reference


class OnnxRuntime:
    """An onnxruntime session on a version's ``model.onnx`` (normalization and softmax inside the graph)."""

    name = ONNX

    def __init__(self, session: onnxruntime.InferenceSession):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.providers: list[str] = session.get_providers()

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        # onnxruntime refuses float64 or a strided view: give it what the graph declares.
        return self.session.run(None, {self.input_name: np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def close(self) -> None:
        self.session = None


def load_runtime(folder: Path, card: ModelCard, kind: str, device: str, threads: int) -> Runtime:
    """The ``kind`` runtime of the version in ``folder`` on ``device`` ("cpu" or "cuda"), computing with
    ``threads`` CPU threads. torch's thread count is per process, so this sets it for the whole process."""
    if kind == TORCH:
        torch.set_num_threads(threads)
        net, _ = load_model(folder, device)
        return TorchRuntime(net, card)
    if kind == ONNX:
        return OnnxRuntime(onnx_session(folder / ONNX_FILE, device, threads))
    raise ValueError(f"expected a runtime in {RUNTIMES}, got {kind!r}")


def onnx_session(path: Path, device: str, threads: int) -> onnxruntime.InferenceSession:
    """An inference session on ``path``: the CUDA provider first where ``device`` is a GPU and this
    onnxruntime build has it, the CPU provider always (for what CUDA does not run)."""
    import onnxruntime  # here: a server on the PyTorch runtime never loads it

    if not path.is_file():
        raise ModelFormatError(f"expected {path.name} in {path.parent} for the onnx runtime, found "
                               f"{sorted(p.name for p in path.parent.iterdir())}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph, run sequentially: parallelism is inside the operators
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", ALLOW_SPINNING)
    options.log_severity_level = 3  # errors only: its warnings (unused initializers…) say nothing to an operator
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=onnx_providers(device))
    except ort_errors() as exc:
        raise ModelFormatError(f"onnxruntime cannot load {path}: {error_line(exc)}") from None


def onnx_providers(device: str) -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wanted = [CUDA_PROVIDER, CPU_PROVIDER] if device.startswith("cuda") else [CPU_PROVIDER]
    return [p for p in wanted if p in available]


@functools.cache
def ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's exception types (imported on first use)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    # They derive from Exception directly, not from a base of their own.
    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph", "NotImplemented",
             "RuntimeException", "EPFail")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def error_line(exc: BaseException, limit: int = 300) -> str:
    """One line from an exporter or onnxruntime error: its cause's type and first line (the exporter's own
    message is a page of advice around it)."""
    cause = exc.__cause__ or exc
    lines = str(cause).strip().splitlines()
    text = f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class Choice:
    """The runtime a server uses, and why (for its load line)."""

    runtime: str
    reason: str


def export_passed(manifest: dict[str, Any]) -> bool:
    """Whether the version has an ONNX export that passed its parity check (and is listed among its files)."""
    record = manifest.get("onnx")
    return isinstance(record, dict) and record.get("passed") is True and ONNX_FILE in manifest.get("files", {})


def decide_runtime(requested: str, manifest: dict[str, Any], device: str = "cpu") -> Choice:
    """The runtime for ``--runtime requested`` (auto, torch or onnx) on the version ``manifest`` describes,
    served on ``device``.

    auto: what the version's profile measured faster, else onnx when the export passed, else torch; on a GPU
    that this onnxruntime build cannot use, torch. onnx on a version without a passing export is refused: it
    has nothing to run."""
    if requested == TORCH:
        return Choice(TORCH, "requested")
    if requested == ONNX:
        if not export_passed(manifest):
            raise ModelFormatError(f"--runtime onnx: version {manifest.get('version')} has no ONNX export that passed its "
                                   f"parity check ({_why_no_export(manifest)}); serve it with --runtime torch or auto")
        return Choice(ONNX, "requested")
    if requested != AUTO:
        raise ValueError(f"expected a runtime in {(AUTO, *RUNTIMES)}, got {requested!r}")
    if not export_passed(manifest):
        return Choice(TORCH, f"auto: no ONNX export to run ({_why_no_export(manifest)})")
    if device.startswith("cuda") and CUDA_PROVIDER not in onnx_providers(device):
        # onnxruntime would leave the GPU idle and run on the CPU: the profile (measured on CPUs) says nothing here.
        return Choice(TORCH, f"auto: this onnxruntime has no {CUDA_PROVIDER}, and PyTorch runs on the GPU")
    profile = manifest.get("profile")
    measured = profile.get("runtime") if isinstance(profile, dict) else None
    if measured in RUNTIMES:
        return Choice(measured, f"auto: the version's profile measured {measured} faster")
    return Choice(ONNX, "auto: the ONNX export passed its parity check and no profile names a faster runtime")


def choose_runtime(requested: str, manifest: dict[str, Any], device: str = "cpu") -> str:
    """The runtime name :func:`decide_runtime` picks."""
    return decide_runtime(requested, manifest, device).runtime


def _why_no_export(manifest: dict[str, Any]) -> str:
    record = manifest.get("onnx")
    if not isinstance(record, dict):
        return "none was recorded: pushed before exports existed"
    if record.get("passed") is not True:
        return f"the export failed: {record.get('error', 'no reason recorded')}"
    return f"{ONNX_FILE} is not among the version's files"
