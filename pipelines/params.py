"""``NAME=VALUE`` pipeline parameters, typed by the pipeline's own signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable


def signature_types(func: Callable) -> dict[str, type]:
    """Parameter name → Python type of a pipeline function."""
    return {name: p.annotation if isinstance(p.annotation, type) else str for name, p in inspect.signature(func).parameters.items()}


def parse_params(pairs: list[str], signature: dict[str, type]) -> dict[str, object]:
    """Parse ``NAME=VALUE`` strings into typed values; reject unknown names, listing the known ones."""
    params: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {pair!r}")
        if name not in signature:
            raise ValueError(f"unknown parameter {name!r}; the pipeline's parameters are: {', '.join(sorted(signature))}")
        params[name] = _convert(name, text, signature[name])
    return params


def _convert(name: str, text: str, kind: type) -> object:
    if kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(f"parameter {name!r}: expected true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"parameter {name!r}: expected {kind.__name__}, got {text!r}") from None
