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


# --- the training knobs: one table, pipeline parameter → TrainConfig field ---------------------------------


def pipeline_parameters() -> dict:
    import inspect

    from pipelines.pipeline import training_pipeline

    return dict(inspect.signature(training_pipeline.pipeline_func).parameters)


def test_every_training_config_field_is_a_pipeline_knob_or_set_by_the_run() -> None:
    import dataclasses

    from components.training.config import TrainConfig
    from components.training.params import PIPELINE_KNOBS, RUN_FIELDS

    knob_fields = list(PIPELINE_KNOBS.values())
    assert len(knob_fields) == len(set(knob_fields)), "two pipeline parameters feed one field"
    assert not set(knob_fields) & set(RUN_FIELDS), "a field is both a knob and set by the run"
    # A new TrainConfig field fails here until it gets a pipeline parameter or a reason in RUN_FIELDS.
    assert set(knob_fields) | set(RUN_FIELDS) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_the_pipeline_defaults_and_types_of_every_knob_are_the_training_configs() -> None:
    import dataclasses

    from components.training.config import TrainConfig
    from components.training.params import PIPELINE_KNOBS, TRAIN_DEFAULTS

    params = pipeline_parameters()
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for name, field in PIPELINE_KNOBS.items():
        assert name in params, f"pipeline parameter {name} (TrainConfig.{field}) is missing"
        assert params[name].default == getattr(TRAIN_DEFAULTS, field), f"default of pipeline parameter {name}"
        assert params[name].annotation.__name__ == types[field], f"type of pipeline parameter {name}"


def test_the_train_step_takes_every_knob_by_its_field_name_and_defaults_none_of_them() -> None:
    from components.training.component import train_model
    from components.training.params import PIPELINE_KNOBS

    inputs = train_model.component_spec.inputs
    for field in PIPELINE_KNOBS.values():
        assert field in inputs, f"train step input {field} is missing"
        # KFP runs the step's source without the table's module, so only the pipeline may hold the default.
        assert inputs[field].default is None and not inputs[field].optional, f"train step input {field} has a default"


def test_knobs_missing_from_the_pipeline_arguments_are_named() -> None:
    from components.training.params import PIPELINE_KNOBS, knobs_from_pipeline, knobs_from_step

    arguments = {name: 1 for name in PIPELINE_KNOBS if name != "train_prefetch"}
    with pytest.raises(ValueError, match=re.escape("missing ['train_prefetch']")):
        knobs_from_pipeline(arguments)
    with pytest.raises(ValueError, match=re.escape("missing ['mode']")):
        knobs_from_step({field: 1 for field in PIPELINE_KNOBS.values() if field != "mode"})
