"""NAME=VALUE pipeline arguments: typed by the pipeline's signature, unknown names rejected."""

from __future__ import annotations

import re

import pytest

from pipelines.params import ParamError, parse_params, signature_from_component_inputs

SIGNATURE = {"epochs": int, "lr": float, "use_gpu": bool, "data_uri": str, "classes": list, "extra": dict}


def test_values_are_typed_by_the_signature() -> None:
    params = parse_params(
        ["epochs=3", "lr=1e-3", "use_gpu=false", "data_uri=file:///tmp/a=b", 'classes=["0","1"]', 'extra={"k":1}'],
        SIGNATURE,
    )
    assert params == {
        "epochs": 3, "lr": 0.001, "use_gpu": False, "data_uri": "file:///tmp/a=b",
        "classes": ["0", "1"], "extra": {"k": 1},
    }
    assert type(params["epochs"]) is int and type(params["lr"]) is float


@pytest.mark.parametrize("text, expected", [("true", True), ("YES", True), ("1", True), ("off", False), ("0", False)])
def test_booleans_accept_the_usual_spellings(text: str, expected: bool) -> None:
    assert parse_params([f"use_gpu={text}"], SIGNATURE) == {"use_gpu": expected}


def test_an_integer_is_a_valid_float() -> None:
    assert parse_params(["lr=1"], SIGNATURE) == {"lr": 1.0}


def test_no_pairs_give_no_params() -> None:
    assert parse_params([], SIGNATURE) == {}


def test_unknown_name_is_rejected_with_the_known_names() -> None:
    with pytest.raises(ParamError) as error:
        parse_params(["epoch=3"], SIGNATURE)
    assert str(error.value) == (
        "unknown pipeline parameter 'epoch'; expected one of: classes, data_uri, epochs, extra, lr, use_gpu"
    )


@pytest.mark.parametrize(
    "pair, message",
    [
        ("epochs=1.5", "pipeline parameter 'epochs' expects an integer, got '1.5'"),
        ("lr=fast", "pipeline parameter 'lr' expects a finite number, got 'fast'"),
        ("lr=nan", "pipeline parameter 'lr' expects a finite number, got 'nan'"),
        ("use_gpu=maybe", "pipeline parameter 'use_gpu' expects a boolean (true/false, yes/no, 1/0), got 'maybe'"),
        ("classes={}", "pipeline parameter 'classes' expects a JSON list, got '{}'"),
        ("extra=[1", "pipeline parameter 'extra' expects a JSON object, got '[1'"),
    ],
)
def test_value_of_the_wrong_type_names_parameter_type_and_value(pair: str, message: str) -> None:
    with pytest.raises(ParamError, match=f"^{re.escape(message)}$"):
        parse_params([pair], SIGNATURE)


@pytest.mark.parametrize("pair", ["epochs", "=3", " =3"])
def test_a_pair_without_name_or_equals_sign_is_rejected(pair: str) -> None:
    with pytest.raises(ParamError, match="expected a pipeline argument as NAME=VALUE"):
        parse_params([pair], SIGNATURE)


def test_a_name_given_twice_is_rejected() -> None:
    with pytest.raises(ParamError, match="'epochs' given twice"):
        parse_params(["epochs=1", "epochs=2"], SIGNATURE)


def test_an_empty_string_value_is_kept_for_strings() -> None:
    assert parse_params(["data_uri="], SIGNATURE) == {"data_uri": ""}


def test_signature_comes_from_a_compiled_pipelines_inputs() -> None:
    from tests.standin_pipeline import SIGNATURE, standin_pipeline

    assert signature_from_component_inputs(standin_pipeline.component_spec.inputs or {}) == SIGNATURE
