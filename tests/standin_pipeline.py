"""A tiny stand-in ``@dsl.pipeline`` for the remote-command tests, so they do not depend on the real pipeline.

No ``from __future__ import annotations`` here: kfp reads component and pipeline annotations as real types.
"""

from kfp import dsl

SIGNATURE = {"epochs": int, "learning_rate": float, "use_gpu": bool, "data_uri": str}


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def add_one(value: int) -> int:
    """Return value + 1."""
    return value + 1


@dsl.pipeline(name="standin-classifier", description="A stand-in pipeline for the remote-command tests.")
def standin_pipeline(epochs: int = 1, learning_rate: float = 0.1, use_gpu: bool = False, data_uri: str = "") -> None:
    """Runs one trivial step."""
    add_one(value=epochs)
