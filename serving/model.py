"""The KServe predictor: a ``kserve.Model`` that serves one model version.

``load()`` materialises the version (a local folder or a store URI), verifies every file's SHA-256
against ``MANIFEST.json`` and only then sets ``ready``. ``predict()`` answers v1 with a JSON dict and
v2 with an ``InferResponse``; bad input raises :class:`kserve.errors.InvalidInput` (HTTP 400).
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from components.modelfile import ModelCard, load_model, verify_manifest
from components.predict import predict_proba
from components.registry import materialize
from serving.codec import V2_DATATYPE, V2_INPUT_NAME, check_v2_header, decode_v1, decode_v2_data

logger = logging.getLogger(__name__)
DEFAULT_MAX_BATCH = 64


class ImageClassifier(Model):
    def __init__(self, name: str, model_uri: str, max_batch: int = DEFAULT_MAX_BATCH):
        super().__init__(name)
        self.model_uri = model_uri
        self.max_batch = max_batch
        self.net: torch.nn.Module | None = None
        self.card: ModelCard | None = None
        self.manifest: dict[str, Any] = {}

    def load(self) -> bool:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with tempfile.TemporaryDirectory(prefix="model-") as scratch:
            folder = materialize(self.model_uri, Path(scratch))
            # Refuse to serve anything whose files do not match the manifest (raises, names the file).
            self.manifest = verify_manifest(folder)
            self.net, self.card = load_model(folder, device)
        logger.info("loaded %s version %s (%s) on %s", self.name, self.manifest.get("version"), self.card.arch, device)
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        # -1: any batch size up to max_batch. Values are pixels on the 0–255 scale.
        return [{"name": V2_INPUT_NAME, "datatype": V2_DATATYPE, "shape": [-1, *self.card.input_shape]}]

    def get_output_types(self) -> list[dict]:
        return [
            {"name": "probabilities", "datatype": V2_DATATYPE, "shape": [-1, self.card.num_classes]},
            {"name": "class", "datatype": "INT64", "shape": [-1]},
        ]

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        if isinstance(payload, InferRequest):
            return self._predict_v2(payload)
        pixels = decode_v1(payload, self.card, self.max_batch)
        probs = self._probabilities(pixels)
        return {"predictions": [self._describe(row) for row in probs]}

    def _predict_v2(self, request: InferRequest) -> InferResponse:
        if len(request.inputs) != 1:
            raise InvalidInput(f'expected exactly one input tensor named "{V2_INPUT_NAME}", found {len(request.inputs)}')
        tensor = request.inputs[0]
        shape = list(tensor.shape)
        check_v2_header(tensor.name, tensor.datatype, shape, self.card, self.max_batch)
        try:
            data = tensor.as_numpy()
        except (ValueError, TypeError):
            raise InvalidInput(f"expected {int(np.prod(shape))} {tensor.datatype} values for shape {shape}, found data that does not fit") from None
        pixels = decode_v2_data(shape, data)
        probs = self._probabilities(pixels)
        classes = probs.argmax(axis=1).astype(np.int64)
        outputs = [
            InferOutput("probabilities", list(probs.shape), V2_DATATYPE, probs.astype(np.float32)),
            InferOutput("class", [len(classes)], "INT64", classes),
        ]
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=request.id or str(uuid.uuid4()))

    def _probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return predict_proba(self.net, torch.from_numpy(pixels), self.card).numpy()

    def _describe(self, probs: np.ndarray) -> dict[str, Any]:
        index = int(probs.argmax())
        return {"class": index, "label": self.card.class_names[index], "probabilities": [round(float(p), 6) for p in probs]}
