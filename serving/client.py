"""A REST client for the predictor: ``python -m serving.client --url URL [--model NAME] [--protocol v1|v2] [--token-file FILE] IMAGE…``.

Without ``--model`` it asks the server which models it serves (KServe's ``GET /v1/models`` or
``GET /v2/models``) and uses the one there is; a server with several wants one named. The bearer token
(for an endpoint behind the mesh's authentication) comes from ``--token-file`` or ``$PREDICTOR_TOKEN``,
never from the command line, where every user on the machine sees it in ``ps``.

IMAGE is a PNG, JPEG or WebP file, sent as it is (v1 ``{"b64": ...}``, v2 a BYTES tensor ``image_bytes``):
the server converts it with the same preprocessing training used. A ``.npy`` file holds pixel values
(0–255) and is sent as numbers (v1 nested lists, v2 an FP32 tensor ``images``). Which of the two a file
is, is read from its first bytes, not its name; anything else is refused before a request is sent. The
functions are what the deploy step's smoke request uses too.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import requests

TIMEOUT_S = 30
TOKEN_ENV = "PREDICTOR_TOKEN"
ACCEPTED = "PNG, JPEG or WebP image files or .npy arrays"
NPY_MAGIC = b"\x93NUMPY"
# The formats the server decodes (components.imagefile.FORMATS), by their first bytes: enough to tell an
# image from an array or a stray file; the server reads the image itself.
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
HEAD_BYTES = 64
InputKind = Literal["image", "npy"]


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def model_metadata(url: str, model: str, token: str | None = None) -> dict[str, Any]:
    response = requests.get(f"{url.rstrip('/')}/v2/models/{model}", headers=_headers(token), timeout=TIMEOUT_S)
    _raise_with_body(response)
    return response.json()


def served_models(url: str, protocol: str = "v1", token: str | None = None) -> list[str]:
    """The names of the models the server serves (KServe's ``GET /v1/models`` or ``GET /v2/models``)."""
    response = requests.get(f"{url.rstrip('/')}/{protocol}/models", headers=_headers(token), timeout=TIMEOUT_S)
    _raise_with_body(response)
    try:
        models = response.json()["models"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f'expected {{"models": [...]}} from {response.url}, found {response.text[:200]!r}') from None
    return [str(m) for m in models]


def default_model(url: str, protocol: str = "v1", token: str | None = None) -> str:
    """The model to call when none was named: the server's only one."""
    models = served_models(url, protocol, token)
    if len(models) == 1:
        return models[0]
    found = f"{len(models)} models ({', '.join(models)})" if models else "none"
    raise ValueError(f"expected the server at {url} to serve one model (or --model NAME to choose), found {found}")


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


def input_kind(path: Path) -> InputKind:
    """Whether ``path`` holds an image or a ``.npy`` array, read from its first bytes; a ValueError for anything else."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    raise ValueError(f"{path}: expected {ACCEPTED}, found {_describe(head, path.stat().st_size)}")


def _describe(head: bytes, size: int) -> str:
    """What a refused file looks like, from its first bytes."""
    if size == 0:
        return "an empty (0-byte) file"
    text = head.decode("utf-8", "ignore")
    # At most a character cut at the end may be dropped; control characters mean binary data.
    if len(text.encode()) >= len(head) - 3 and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"text ({size} bytes, starting {text[:40]!r})"
    return f"{size} bytes of binary data starting {head[:8]!r}"


def load_pixels(path: Path, input_shape: list[int]) -> np.ndarray:
    """Read a ``.npy`` array of pixel values shaped for the model (``[C,H,W]``)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:  # pickled (object) arrays, a damaged header or a cut file
        raise ValueError(f"{path}: expected a .npy array of pixel values, found one numpy cannot read ({exc})") from None
    if array.size != math.prod(input_shape):
        raise ValueError(f"{path}: expected a .npy array of {math.prod(input_shape)} pixel values (shape {input_shape}), "
                         f"found shape {list(array.shape)}")
    return array.reshape(input_shape)


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


def predict_files(url: str, model: str | None, paths: list[Path], protocol: str, token: str | None = None,
                  top_k: int | None = None) -> list[dict[str, Any]]:
    """Predictions for image or ``.npy`` files, one dict per file (with its path). Files that are neither are
    refused before any request; ``model`` None asks the server for its one model."""
    kinds = {input_kind(p) for p in paths}
    if len(kinds) > 1:
        raise ValueError("send either image files or .npy files in one call, not both (a v2 request carries one tensor)")
    model = model or default_model(url, protocol, token)
    if kinds == {"image"}:
        encoded = [p.read_bytes() for p in paths]
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


def _with_served_models(exc: requests.HTTPError, url: str, model: str | None, protocol: str, token: str | None) -> str:
    """A 404 for a model named with --model says which models the server does serve; other errors stay as they are."""
    if model is None or exc.response is None or exc.response.status_code != 404:
        return str(exc)
    try:
        models = served_models(url, protocol, token)
    except (requests.RequestException, ValueError):  # not a server that lists its models: its own 404 says enough
        return str(exc)
    if model in models:
        return str(exc)
    return f"expected --model to name a model the server at {url} serves ({', '.join(models) or 'none'}), found {model!r}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", help="model name (default: the one model the server serves)")
    parser.add_argument("--protocol", choices=("v1", "v2"), default="v1")
    parser.add_argument("--token-file", type=Path, help=f"file holding the bearer token (default: ${TOKEN_ENV}; none if unset)")
    parser.add_argument("--token", help=argparse.SUPPRESS)  # only to refuse it with a reason
    parser.add_argument("--top-k", type=int, help="also return the k most likely classes")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help=ACCEPTED)
    args = parser.parse_args(argv)
    if args.token is not None:
        sys.exit(f"error: expected the token in --token-file or ${TOKEN_ENV}, found --token on the command line (visible to every user in ps)")
    token = None
    try:
        token = read_token(args.token_file)
        results = predict_files(args.url, args.model, args.images, args.protocol, token, args.top_k)
    except requests.HTTPError as exc:
        sys.exit(f"error: {_with_served_models(exc, args.url, args.model, args.protocol, token)}")
    except (requests.RequestException, OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
