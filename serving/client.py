"""A REST client for the predictor: ``python -m serving.client --url URL [--protocol v1|v2] [--token-file FILE] IMAGE…``.

The bearer token (for an endpoint behind the mesh's authentication) comes from ``--token-file`` or
``$PREDICTOR_TOKEN``, never from the command line, where every user on the machine sees it in ``ps``.

IMAGE is a PNG/JPEG file, sent as it is (v1 ``{"b64": ...}``, v2 a BYTES tensor ``image_bytes``): the
server converts it with the same preprocessing training used. A ``.npy`` file holds pixel values
(0–255) and is sent as numbers (v1 nested lists, v2 an FP32 tensor ``images``). The functions are
what the deploy step's smoke request uses too.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import requests

TIMEOUT_S = 30
TOKEN_ENV = "PREDICTOR_TOKEN"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def model_metadata(url: str, model: str, token: str | None = None) -> dict[str, Any]:
    response = requests.get(f"{url.rstrip('/')}/v2/models/{model}", headers=_headers(token), timeout=TIMEOUT_S)
    _raise_with_body(response)
    return response.json()


def is_ready(url: str, model: str) -> bool:
    try:
        return requests.get(f"{url.rstrip('/')}/v2/models/{model}/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def predict_v1(url: str, model: str, pixels: np.ndarray, token: str | None = None, top_k: int | None = None) -> list[dict[str, Any]]:
    """POST ``[N,C,H,W]`` pixels to ``/v1/models/MODEL:predict``; return the predictions."""
    return _post_v1(url, model, pixels.tolist(), token, top_k)


def predict_v1_images(url: str, model: str, images: list[bytes], token: str | None = None, top_k: int | None = None) -> list[dict[str, Any]]:
    """POST encoded PNG/JPEG files as ``{"b64": ...}`` instances; return the predictions."""
    return _post_v1(url, model, [{"b64": base64.b64encode(i).decode("ascii")} for i in images], token, top_k)


def infer_v2(url: str, model: str, pixels: np.ndarray, token: str | None = None, top_k: int | None = None) -> dict[str, Any]:
    """POST ``[N,C,H,W]`` pixels as the FP32 tensor ``images``; return the response."""
    tensor = {"name": "images", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.astype(np.float32).ravel().tolist()}
    return _post_v2(url, model, tensor, token, top_k)


def infer_v2_images(url: str, model: str, images: list[bytes], token: str | None = None, top_k: int | None = None) -> dict[str, Any]:
    """POST encoded PNG/JPEG files as the BYTES tensor ``image_bytes`` (base64 text, as JSON requires)."""
    tensor = {"name": "image_bytes", "shape": [len(images)], "datatype": "BYTES", "data": [base64.b64encode(i).decode("ascii") for i in images]}
    return _post_v2(url, model, tensor, token, top_k)


def v2_output(response: dict[str, Any], name: str) -> list[Any]:
    return next(o["data"] for o in response["outputs"] if o["name"] == name)


def v2_classes(response: dict[str, Any]) -> list[int]:
    return v2_output(response, "class")


def _post_v1(url: str, model: str, instances: list[Any], token: str | None, top_k: int | None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"instances": instances}
    if top_k is not None:
        body["parameters"] = {"top_k": top_k}
    response = requests.post(f"{url.rstrip('/')}/v1/models/{model}:predict", json=body, headers=_headers(token), timeout=TIMEOUT_S)
    _raise_with_body(response)
    return response.json()["predictions"]


def _post_v2(url: str, model: str, tensor: dict[str, Any], token: str | None, top_k: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [tensor]}
    if top_k is not None:
        body["parameters"] = {"top_k": top_k}
    response = requests.post(f"{url.rstrip('/')}/v2/models/{model}/infer", json=body, headers=_headers(token), timeout=TIMEOUT_S)
    _raise_with_body(response)
    return response.json()


def _raise_with_body(response: requests.Response) -> None:
    if response.status_code >= 400:
        raise requests.HTTPError(f"{response.status_code} from {response.url}: {response.text[:500]}", response=response)


def load_pixels(path: Path, input_shape: list[int]) -> np.ndarray:
    """Read a ``.npy`` array of pixel values shaped for the model (``[C,H,W]``)."""
    return np.load(path, allow_pickle=False).reshape(input_shape)


def summarize_v2(response: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per image, like the v1 predictions: class, label, its probability (and the top k)."""
    classes, labels = v2_output(response, "class"), v2_output(response, "label")
    probs = np.asarray(v2_output(response, "probabilities"), dtype=np.float64).reshape(len(classes), -1)
    summary = [{"class": c, "label": label, "probability": round(float(p[c]), 6)} for c, label, p in zip(classes, labels, probs)]
    if any(o["name"] == "top_k_classes" for o in response["outputs"]):
        top = np.asarray(v2_output(response, "top_k_classes")).reshape(len(classes), -1)
        for row, item, p in zip(top, summary, probs):
            item["top_k"] = [{"class": int(c), "probability": round(float(p[c]), 6)} for c in row]
    return summary


def predict_files(url: str, model: str, paths: list[Path], protocol: str, token: str | None = None, top_k: int | None = None) -> list[dict[str, Any]]:
    """Predictions for image or ``.npy`` files, one dict per file (with its path)."""
    images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
    if images and len(images) != len(paths):
        raise ValueError("send either image files or .npy files in one call, not both (a v2 request carries one tensor)")
    if images:
        encoded = [p.read_bytes() for p in images]
        results = predict_v1_images(url, model, encoded, token, top_k) if protocol == "v1" else summarize_v2(infer_v2_images(url, model, encoded, token, top_k))
    else:
        shape = [int(d) for d in model_metadata(url, model, token)["inputs"][0]["shape"][1:]]
        pixels = np.stack([load_pixels(p, shape) for p in paths])
        results = predict_v1(url, model, pixels, token, top_k) if protocol == "v1" else summarize_v2(infer_v2(url, model, pixels, token, top_k))
    return [{"file": str(p), **r} for p, r in zip(paths, results)]


def read_token(token_file: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token from ``token_file`` if given, else ``$PREDICTOR_TOKEN``, else None (no token)."""
    if token_file is None:
        return environ.get(TOKEN_ENV, "").strip() or None
    token = token_file.read_text(encoding="utf-8").strip().removeprefix("Bearer ").strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"expected one bearer token in {token_file}, found {'nothing' if not token else 'whitespace inside it'}")
    return token


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", default="classifier", help="model name")
    parser.add_argument("--protocol", choices=("v1", "v2"), default="v1")
    parser.add_argument("--token-file", type=Path, help=f"file holding the bearer token (default: ${TOKEN_ENV}; none if unset)")
    parser.add_argument("--token", help=argparse.SUPPRESS)  # only to refuse it with a reason
    parser.add_argument("--top-k", type=int, help="also return the k most likely classes")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.token is not None:
        sys.exit(f"error: expected the token in --token-file or ${TOKEN_ENV}, found --token on the command line (visible to every user in ps)")
    try:
        token = read_token(args.token_file)
        results = predict_files(args.url, args.model, args.images, args.protocol, token, args.top_k)
    except (requests.RequestException, OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
