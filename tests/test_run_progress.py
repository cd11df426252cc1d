"""The console of a local run: one line per step as it starts and ends, each step's output in its own log,
the failing step's error line kept for the run's last lines, kfp.local's inapplicable warnings silenced.

The stream is kfp.local's own: each task is replayed with the calls its dispatcher makes
(``kfp.local.task_dispatcher``: its logger context, "Executing task", the step's lines through its indented
``print``, "finished with status"), so the records and writes arrive exactly as in a run.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import pytest
from kfp.local import logging_utils, status
from kfp.local.subprocess_task_handler import SubprocessTaskHandler

from components.training.worker import EpochStats, _log_epoch
from pipelines.run_progress import RunProgress, error_line, following, key_figure

TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/x/ephemeral_component.py", line 30, in prepare_data',
    "    info = prepare(open_store(data_uri), open_store(store_uri), config)",
    "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    "components.errors.DataError: no files in /data/empty: expected MNIST IDX files or an ImageFolder tree (<class>/<image>.png)",
]


def replay_task(task: str, lines: list[str], succeeded: bool = True) -> None:
    """What kfp.local 2.17's dispatcher writes for one task whose step printed ``lines``."""
    with logging_utils.local_logger_context():
        name = logging_utils.format_task_name(task)
        logging.info(f"Executing task {name}")
        logging.info("Streamed logs:\n")
        with logging_utils.indented_print():
            for line in lines:
                print(line + "\n", end="")
            print("\n")
        outcome = status.Status.SUCCESS if succeeded else status.Status.FAILURE
        message = f"Task {name} finished with status {logging_utils.format_status(outcome)}"
        logging.info(message) if succeeded else logging.error(message)
        logging_utils.print_horizontal_line()


class Clock:
    """Each reading one second after the previous one: step durations without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def progress_for(tmp_path: Path, console: io.StringIO, verbose: bool = False, figures: dict[str, str] | None = None) -> RunProgress:
    return RunProgress(tmp_path / "logs", console, lambda task: (figures or {}).get(task, ""), verbose, Clock())


def epoch_line(capsys: pytest.CaptureFixture[str], epoch: int, loss: float, val_accuracy: float) -> str:
    """The epoch line as the worker prints it (its real format), prefixed with the rank name as the launcher does."""
    _log_epoch(EpochStats(epoch, loss, 0.9, 0.2, val_accuracy, 3.0, 0.1), 15)
    return "[worker0] " + capsys.readouterr().out.strip()


def test_each_step_gets_a_start_and_an_end_line_and_its_output_goes_to_its_own_log(tmp_path: Path) -> None:
    console = io.StringIO()
    with following(progress_for(tmp_path, console, figures={"prepare-data": "1437 train, 180 val, 180 test images"})):
        replay_task("prepare-data", ["INFO:root:Got executor_input:", "{", '    "inputs": {}', "}", "prepared 1797 images"])
        replay_task("push-model", ["registered digits version 1"])
    assert console.getvalue().splitlines() == [
        "prepare-data    started",
        "prepare-data    done in 1.0s: 1437 train, 180 val, 180 test images",
        "push-model      started",
        "push-model      done in 1.0s",
    ]
    log = (tmp_path / "logs" / "prepare-data.log").read_text().splitlines()
    # The step's lines as it printed them (kfp.local's indent and colours gone), between kfp.local's own records.
    assert log[log.index("INFO:root:Got executor_input:"):][:5] == [
        "INFO:root:Got executor_input:", "{", '    "inputs": {}', "}", "prepared 1797 images"]
    assert any(line.endswith("Executing task 'prepare-data'") for line in log)
    assert any(line.endswith("Task 'prepare-data' finished with status SUCCESS") for line in log)
    assert "registered digits version 1" not in "\n".join(log)
    assert "registered digits version 1" in (tmp_path / "logs" / "push-model.log").read_text()


def test_training_shows_one_line_per_epoch_with_loss_and_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["[ps0] serving shard 0", epoch_line(capsys, 1, 0.8123, 0.9012), epoch_line(capsys, 2, 0.3001, 0.9555)]
    console = io.StringIO()
    with following(progress_for(tmp_path, console)):
        replay_task("train-model", lines)
    assert console.getvalue().splitlines()[1:3] == [
        "train-model     epoch 1/15: loss 0.8123, train_acc 0.9000, val_acc 0.9012",
        "train-model     epoch 2/15: loss 0.3001, train_acc 0.9000, val_acc 0.9555",
    ]
    assert "[ps0] serving shard 0" in (tmp_path / "logs" / "train-model.log").read_text()


def test_a_failed_step_is_kept_with_its_error_line_and_its_log(tmp_path: Path) -> None:
    console = io.StringIO()
    with following(progress_for(tmp_path, console)) as progress:
        replay_task("prepare-data", ["reading /data/empty", *TRACEBACK], succeeded=False)
    assert console.getvalue().splitlines() == ["prepare-data    started", "prepare-data    FAILED after 1.0s"]
    assert progress.failure is not None
    assert progress.failure.step == "prepare-data"
    assert progress.failure.error == ("DataError: no files in /data/empty: expected MNIST IDX files or an ImageFolder tree "
                                      "(<class>/<image>.png)")
    assert progress.failure.log == tmp_path / "logs" / "prepare-data.log"
    assert TRACEBACK[-1] in progress.failure.log.read_text()


def test_verbose_shows_kfp_local_output_as_it_was_and_still_writes_the_logs(tmp_path: Path) -> None:
    console = io.StringIO()
    with following(progress_for(tmp_path, console, verbose=True)):
        replay_task("push-model", ["registered digits version 1"])
    shown = console.getvalue()
    assert "    registered digits version 1\n" in shown  # kfp.local's indented step output
    assert "Executing task" in shown and "push-model      started" not in shown
    assert "registered digits version 1" in (tmp_path / "logs" / "push-model.log").read_text()


def test_kfp_local_output_outside_any_step_goes_to_the_pipeline_log(tmp_path: Path) -> None:
    console = io.StringIO()
    with following(progress_for(tmp_path, console)):
        with logging_utils.local_logger_context():
            logging.info("Running pipeline: digits")
        replay_task("evaluate-model", ["gate: rejected: accuracy 0.5600 is below the threshold 0.9500"])
        with logging_utils.local_logger_context():
            logging.info("Skipping conditional task condition-1 (condition evaluated to False)")
    assert console.getvalue().splitlines() == ["evaluate-model  started", "evaluate-model  done in 1.0s"]
    pipeline_log = (tmp_path / "logs" / "pipeline.log").read_text()
    assert "Running pipeline: digits" in pipeline_log and "Skipping conditional task condition-1" in pipeline_log
    step_log = (tmp_path / "logs" / "evaluate-model.log").read_text()
    assert "gate: rejected" in step_log and "Skipping" not in step_log and step_log.rstrip().endswith("-" * 20)


def test_the_error_line_is_the_last_tracebacks_exception_line() -> None:
    chained = ["Traceback (most recent call last):", '  File "a.py", line 1, in f', "KeyError: 'x'", "",
               "During handling of the above exception, another exception occurred:", "",
               "Traceback (most recent call last):", '  File "a.py", line 3, in f',
               "components.errors.TrainingError: training failed: worker0 exited with code 1; its last lines:",
               "  [worker0] RuntimeError: boom", ""]
    assert error_line(chained) == "TrainingError: training failed: worker0 exited with code 1; its last lines:"
    assert error_line(["starting", "error: the port is taken", ""]) == "error: the port is taken"
    assert error_line([]) == "(the step printed nothing)"


def test_kfp_locals_warnings_that_do_not_apply_are_silenced_unless_verbose(tmp_path: Path) -> None:
    project_image = "kfpps.azurecr.io/kfp-ps-classifier:0.1.0"  # has no "python" in its name
    for verbose, expected in ((False, []), (True, [RuntimeWarning])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with following(progress_for(tmp_path / str(verbose), io.StringIO(), verbose=verbose)):
                SubprocessTaskHandler.validate_image(None, project_image)  # kfp.local's own check, its own words
                warnings.warn("a warning the project knows nothing about", UserWarning, stacklevel=1)
        assert [w.category for w in caught if "DockerRunner" in str(w.message)] == expected
        assert any("knows nothing about" in str(w.message) for w in caught)  # unknown warnings still show


def executor_output(parameters: dict | None = None, **artifacts: dict) -> dict:
    """An ``executor_output.json`` as kfp's executor writes it: artifacts by output name, with metadata."""
    return {"parameterValues": parameters or {},
            "artifacts": {name: {"artifacts": [{"name": name, "uri": f"/r/{name}", "metadata": meta}]} for name, meta in artifacts.items()}}


def test_each_step_has_its_key_figure_from_its_outputs() -> None:
    dataset = {"counts": {"train": 1437, "val": 180, "test": 180}, "classes": 10, "unreadable": 0, "duplicates_across_splits": 2}
    assert key_figure("prepare-data", executor_output(dataset=dataset)) == "1437 train, 180 val, 180 test images, 10 classes; 2 duplicates across splits"
    trained = executor_output(metrics={"best_val_accuracy": 0.98765}, model={"best_epoch": 14})
    assert key_figure("train-model", trained) == "best val_acc 0.9877 (epoch 14)"
    evaluated = executor_output({"Output": "rejected"}, metrics={"accuracy": 0.56, "champion_accuracy": 0.9944})
    assert key_figure("evaluate-model", evaluated) == "test accuracy 0.5600 (production 0.9944), rejected"
    assert key_figure("push-model", executor_output({"version": 3, "model_uri": "x"})) == "registered version 3"
    assert key_figure("deploy-model", executor_output({"Output": "http://127.0.0.1:8080"})) == "serving at http://127.0.0.1:8080"
    assert key_figure("some-new-step", executor_output({"Output": 1})) == ""


def test_key_figures_read_the_executor_output_as_written(tmp_path: Path) -> None:
    """The figure of a task whose outputs are on disk, the way local_run reads them (one file per task)."""
    from pipelines.run_folder import task_output

    task = tmp_path / "digits-ps-classifier-2026-01-01" / "push-model"
    task.mkdir(parents=True)
    (task / "executor_output.json").write_text(json.dumps(executor_output({"version": 7, "model_uri": "x"})))
    assert key_figure("push-model", task_output(tmp_path, "push-model")) == "registered version 7"
    assert task_output(tmp_path, "deploy-model") is None
