"""``run --help`` lists the pipeline's parameters with their defaults and the descriptions from the pipeline
function's own docstring (as KFP compiles them).

No ``from __future__ import annotations`` here: kfp reads the stand-in pipeline's annotations as real types.
"""

import subprocess
import sys

from kfp import dsl

from pipelines.params import parameter_help
from pipelines.pipeline import training_pipeline


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def count(epochs: int) -> int:
    """Return epochs."""
    return epochs


@dsl.pipeline(name="help-standin")
def help_standin(data_uri: str, epochs: int = 3, use_gpu: bool = False, tag: str = "",
                 launcher: str = "local") -> None:
    """A stand-in.

    Args:
        data_uri: Where the raw images are.
        epochs: Passes over the data.
        use_gpu: Train on a GPU.
        tag: A label.
        launcher: Where the training ranks run: local (processes inside the step) or trainjob (a TrainJob on the cluster).
    """
    count(epochs=epochs)


def test_each_parameter_is_shown_as_name_equals_default_with_its_docstring_description() -> None:
    table = parameter_help(help_standin.component_spec.inputs, width=80, set_by_run={"tag": "set to the git commit"})
    assert table.splitlines() == [  # a head too long for the column puts its description on the next line
        "  data_uri (required, str)",
        "                          Where the raw images are.",
        "  epochs=3                Passes over the data.",
        "  use_gpu=false           Train on a GPU.",
        "  tag (set to the git commit)",
        "                          A label.",
        "  launcher=local          Where the training ranks run: local (processes inside",
        "                          the step) or trainjob (a TrainJob on the cluster).",
    ]


def test_run_help_lists_every_pipeline_parameter_with_its_default_and_description() -> None:
    result = subprocess.run([sys.executable, "-m", "pipelines", "run", "--help"], capture_output=True, text=True, timeout=120,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())  # descriptions are wrapped: compare with single spaces
    assert "--param NAME=VALUE" in shown and "-v, --verbose" in shown
    inputs = training_pipeline.component_spec.inputs
    assert len(inputs) >= 30
    for name, spec in inputs.items():
        assert f" {name}" in shown, name
        assert " ".join(spec.description.split()) in shown, name
    assert f"epochs={inputs['epochs'].default} Passes over the training split." in shown
    assert "model_name=digits Registry name of the model" in shown
    assert "data_uri (--data-uri; default: the bundled sample)" in shown
