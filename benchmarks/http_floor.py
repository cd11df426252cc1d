"""The predictor with the model's work taken out: what this HTTP stack costs per request before any inference.

``python benchmarks/http_floor.py {http,parse} SERVER_ARGS...`` starts ``python -m serving SERVER_ARGS...`` (the
same process, the same KServe app, uvicorn protocol, access log and :class:`serving.routes.InferenceFront`), with
one change, made here and nowhere in the product: the front answers an inference request with two fixed bytes
(``{}``) once it has read the body (``http``), or once it has also parsed the v2 body and decoded its pixels as
the predictor does (``parse``: :func:`serving.protocol.parse_infer_body`, then
:func:`serving.codec.decode_pixel_tensor` for the served model's input shape), without the batcher, the forward
pass or the answer's encoding. ``benchmarks/serve_load.py`` drives it like the real server: the server CPU per
request it measures is a floor under every inference path on this stack, and bounds served/limit from above.
"""

from __future__ import annotations

import runpy
import sys

from serving import routes
from serving.codec import Tensor, decode_pixel_tensor
from serving.protocol import parse_infer_body

MODES = ("http", "parse")
_FIXED = [(b"content-type", b"application/json"), (b"content-length", b"2")]


def install(mode: str) -> None:
    """Replace ``InferenceFront._serve`` (called with the body read) with the floor's answer."""

    async def serve_floor(self, scope, receive, send, answer, model_name, body) -> None:  # noqa: ANN001 - InferenceFront._serve's
        if mode == "parse":
            request = parse_infer_body(body, None, model_name)
            spec = self.routes.dataplane.model_registry.get_model(model_name).spec
            decode_pixel_tensor(Tensor(*(getattr(request.inputs[0], k) for k in ("name", "datatype", "shape", "data"))), spec)
        await send({"type": "http.response.start", "status": 200, "headers": _FIXED})
        await send({"type": "http.response.body", "body": b"{}"})

    routes.InferenceFront._serve = serve_floor


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        sys.exit(f"usage: http_floor.py {{{','.join(MODES)}}} SERVER_ARGS... (found {sys.argv[1:2] or 'no mode'})")
    install(sys.argv[1])
    sys.argv = ["serving", *sys.argv[2:]]
    runpy.run_module("serving", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
