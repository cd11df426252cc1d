"""A REST client for the predictor: ``python -m serving.client --url URL [--protocol v1|v2] IMAGE…``.

IMAGE is a PNG/JPEG file (converted to the model's input with the project's own preprocessing), or
``.npy`` pixels. The functions are what the deploy step's smoke request uses too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from components.preprocessing import image_to_array

TIMEOUT_S = 30


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def model_metadata(url: str, model: str, token: str | None = None) -> dict[str, Any]:
    response = requests.get(f"{url.rstrip('/')}/v2/models/{model}", headers=_headers(token), timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def is_ready(url: str, model: str) -> bool:
    try:
        return requests.get(f"{url.rstrip('/')}/v2/models/{model}/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def predict_v1(url: str, model: str, pixels: np.ndarray, token: str | None = None) -> list[dict[str, Any]]:
    """POST ``[N,C,H,W]`` pixels to ``/v1/models/MODEL:predict``; return the predictions."""
    body = {"instances": pixels.tolist()}
    response = requests.post(f"{url.rstrip('/')}/v1/models/{model}:predict", json=body, headers=_headers(token), timeout=TIMEOUT_S)
    _raise_with_body(response)
    return response.json()["predictions"]


def infer_v2(url: str, model: str, pixels: np.ndarray, token: str | None = None) -> dict[str, Any]:
    """POST ``[N,C,H,W]`` pixels as an FP32 tensor to ``/v2/models/MODEL/infer``; return the response."""
    body = {
        "inputs": [{"name": "images", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.astype(np.float32).ravel().tolist()}]
    }
    response = requests.post(f"{url.rstrip('/')}/v2/models/{model}/infer", json=body, headers=_headers(token), timeout=TIMEOUT_S)
    _raise_with_body(response)
    return response.json()


def v2_classes(response: dict[str, Any]) -> list[int]:
    return next(o["data"] for o in response["outputs"] if o["name"] == "class")


def _raise_with_body(response: requests.Response) -> None:
    if response.status_code >= 400:
        raise requests.HTTPError(f"{response.status_code} from {response.url}: {response.text[:500]}", response=response)


def load_pixels(path: Path, input_shape: list[int]) -> np.ndarray:
    """Read an image file or ``.npy`` array as ``uint8 [C,H,W]`` shaped for the model."""
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).reshape(input_shape)
    channels, height, width = input_shape
    with Image.open(path) as image:
        return image_to_array(image, channels, (height, width))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", default="classifier", help="model name")
    parser.add_argument("--protocol", choices=("v1", "v2"), default="v1")
    parser.add_argument("--token", help="bearer token (e.g. for an Istio-protected endpoint)")
    parser.add_argument("images", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        shape = [int(d) for d in model_metadata(args.url, args.model, args.token)["inputs"][0]["shape"][1:]]
        pixels = np.stack([load_pixels(p, shape) for p in args.images])
        result = predict_v1(args.url, args.model, pixels, args.token) if args.protocol == "v1" else infer_v2(args.url, args.model, pixels, args.token)
    except (requests.RequestException, OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
