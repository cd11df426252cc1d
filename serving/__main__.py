"""``python -m serving --model-uri URI [--model-name NAME] [--http-port PORT]``: serve one model version.

Extends KServe's own argument parser, so every KServe server option works too.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kserve import ModelServer
from kserve import model_server as kserve_server

from components.errors import ProjectError
from serving.model import DEFAULT_MAX_BATCH, ImageClassifier


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(parents=[kserve_server.parser], conflict_handler="resolve", description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True, help="model version: a local folder or a store URI")
    parser.add_argument("--model-name", "--model_name", dest="model_name", default="classifier", help="name in the REST paths")
    parser.add_argument("--http-port", "--http_port", dest="http_port", type=int, default=8080)
    parser.add_argument("--grpc-port", "--grpc_port", dest="grpc_port", type=int, default=8081)
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="most images one request may carry")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model = ImageClassifier(args.model_name, args.model_uri, max_batch=args.max_batch)
    try:
        model.load()
    except ProjectError as exc:
        # A tampered or incomplete version must never become ready: say why and exit non-zero.
        logging.getLogger("serving").error("refusing to serve %s: %s", args.model_uri, exc)
        sys.exit(2)
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc, workers=1).start([model])


if __name__ == "__main__":
    main()
