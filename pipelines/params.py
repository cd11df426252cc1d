"""Typed ``NAME=VALUE`` pipeline arguments, shared by the local runner and the remote commands.

The caller passes the pipeline's parameter signature (name → Python type) instead of this module importing the
pipeline, so parsing stays a pure function that the CLI, the local runner and the tests all share.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from components.errors import ProjectError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

# KFP's parameter type names (ComponentSpec input types) and the Python types they carry.
_KFP_TYPES: dict[str, type] = {
    "Integer": int,
    "Double": float,
    "Float": float,
    "Boolean": bool,
    "String": str,
    "List": list,
    "Dict": dict,
    "Struct": dict,
}


class ParamError(ProjectError):
    """A ``NAME=VALUE`` argument is malformed, unknown, or has a value of the wrong type."""


def parse_params(pairs: list[str], signature: Mapping[str, type]) -> dict[str, Any]:
    """Parse ``NAME=VALUE`` strings into typed pipeline arguments.

    Args:
        pairs: Arguments as given on the command line, e.g. ``["epochs=3", "lr=0.01"]``.
        signature: The pipeline's parameters, name → Python type (int, float, bool, str, list, dict).

    Returns:
        Name → value converted to the parameter's type.

    Raises:
        ParamError: a pair has no ``=``, a name is unknown or repeated, or a value does not fit its type.
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        name, value = _split_pair(pair)
        if name not in signature:
            known = ", ".join(sorted(signature)) or "(none)"
            raise ParamError(f"unknown pipeline parameter {name!r}; expected one of: {known}")
        if name in params:
            raise ParamError(f"pipeline parameter {name!r} given twice; expected each name at most once")
        params[name] = convert_value(name, value, signature[name])
    return params


def convert_value(name: str, text: str, kind: type) -> Any:
    """Convert one parameter's text to ``kind``; the message names the parameter, the type and the text."""
    if kind is str:
        return text
    parse = _PARSERS.get(kind)
    if parse is None:
        raise ParamError(
            f"pipeline parameter {name!r} has type {kind!r}; expected one of int, float, bool, str, list, dict"
        )
    try:
        return parse(text)
    except ValueError:
        raise ParamError(f"pipeline parameter {name!r} expects {_DESCRIPTIONS[kind]}, got {text!r}") from None


def signature_from_component_inputs(inputs: Mapping[str, Any]) -> dict[str, type]:
    """Build a signature from a compiled pipeline's ``component_spec.inputs`` (name → InputSpec with ``.type``).

    For a ``@dsl.pipeline`` function ``p``: ``signature_from_component_inputs(p.component_spec.inputs or {})``.
    Artifact inputs (types other than KFP's parameter types) are left out: they cannot be given as text.
    """
    return {name: _KFP_TYPES[spec.type] for name, spec in inputs.items() if spec.type in _KFP_TYPES}


def parameter_help(inputs: Mapping[str, Any], width: int = 100, set_by_run: Mapping[str, str] | None = None) -> str:
    """The pipeline's parameters for ``--help``, one per entry: ``NAME=DEFAULT`` (what ``--param`` takes) and
    the description KFP read from the pipeline function's docstring, wrapped to ``width``.

    ``inputs`` is a compiled pipeline's ``component_spec.inputs``; ``set_by_run`` names parameters that the
    command fills in itself (name -> how), shown instead of their default.
    """
    set_by_run = set_by_run or {}
    params = {name: spec for name, spec in inputs.items() if spec.type in _KFP_TYPES}
    heads = {name: _head(name, spec, set_by_run.get(name)) for name, spec in params.items()}
    column = min(max(map(len, heads.values()), default=0) + 4, width // 3)
    lines = []
    for name, spec in params.items():
        head = f"  {heads[name]}"
        body = textwrap.wrap(spec.description or "", max(20, width - column)) or [""]
        if len(head) + 2 > column:  # a long NAME=DEFAULT: the description starts on the next line
            lines.append(head)
            head = ""
        lines += [f"{head:<{column}}{body[0]}", *(" " * column + more for more in body[1:])]
    return "\n".join(lines)


def _head(name: str, spec: Any, set_by_run: str | None) -> str:
    if set_by_run is not None:
        return f"{name} ({set_by_run})"
    if not spec.optional:
        return f"{name} (required, {_KFP_TYPES[spec.type].__name__})"
    default = json.dumps(spec.default) if isinstance(spec.default, (bool, list, dict)) or spec.default == "" else spec.default
    return f"{name}={default}"


def _split_pair(pair: str) -> tuple[str, str]:
    name, sep, value = pair.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ParamError(f"expected a pipeline argument as NAME=VALUE, got {pair!r}")
    return name, value


def _to_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # JSON, and so the KFP API, cannot carry NaN or infinity
        raise ValueError(text)
    return value


def _json_list(text: str) -> list:
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError(text)
    return value


def _json_dict(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


_PARSERS: dict[type, Callable[[str], Any]] = {
    bool: _to_bool,
    int: int,
    float: _finite_float,
    list: _json_list,
    dict: _json_dict,
}

_DESCRIPTIONS: dict[type, str] = {
    bool: "a boolean (true/false, yes/no, 1/0)",
    int: "an integer",
    float: "a finite number",
    list: "a JSON list",
    dict: "a JSON object",
}
