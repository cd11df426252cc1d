"""A local run you can follow: one console line per step as it starts and ends, each step's output in a log file.

kfp.local writes everything it shows to ``sys.stdout``: a step's output by ``print`` from the thread that
runs the step, and its own messages through a logging handler on the root logger that it creates on
``sys.stdout`` for each task. For the length of a run :func:`following` therefore puts a stream in place
of ``sys.stdout`` that sends each line to the log file of the step its thread is running, and a filter on
the root logger (kfp.local replaces the root's handlers for each task, never its filters) that sees the
"Executing task" and "finished with status" records as they happen. The console gets one line as a
step starts, one per training epoch, and one as it ends with its duration and key figure; ``verbose``
shows kfp.local's raw output as well, as it was before. A failed step is kept as :class:`StepFailure`:
its name, its error line and its log, for the run's last lines.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from components.errors import ProjectError

PIPELINE_LOG = "pipeline.log"  # what kfp.local writes outside any step
NAME_WIDTH = 15  # the longest task name, "evaluate-model", and a space
TAIL_LINES = 500  # lines kept per step to find its error line in (a traceback is rarely longer)
KFP_INDENT = " " * 4  # kfp.local prints this before every line of a step's output (logging_utils.indented_print)

_CLEAR_LINE = "\r\033[K"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # kfp.local colours task names and statuses
_RULE = re.compile(r"-{20,}")  # logging_utils.print_horizontal_line, the last thing kfp.local writes for a task
_TASK_START = re.compile(r"Executing task '(?P<task>[^']+)'")
_TASK_END = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")
# A training epoch as components.training.worker._log_epoch prints it, prefixed with the rank's name by the
# local launcher: "[worker0] epoch 3/15  loss 0.2100  train_acc 0.9300  val_loss 0.1500  val_acc 0.9600 …".
_EPOCH = re.compile(r"\[\w+\] epoch (?P<epoch>\d+/\d+)\s+loss (?P<loss>\S+)\s+train_acc (?P<acc>\S+)\s+"
                    r"val_loss \S+\s+val_acc (?P<val_acc>\S+)")
_QUALIFIED = re.compile(r"(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*(?::|$))")  # "components.errors." of a qualified name

# kfp.local's warnings that do not apply to this project's local runs, and why:
QUIET_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # The steps run with use_venv=False in this interpreter, which has the image's pinned packages (make setup
    # installs requirements.lock); the warning only sees that the image's name does not contain "python".
    (RuntimeWarning, r"You may be attemping to run a task that uses custom or non-Python base image"),
    # Display names and CPU/memory limits are for the cluster; that the local runner ignores them is expected.
    (UserWarning, r"Task '[^']+': settings \[.*\] have no effect in the current local runner"),
)


@dataclass(frozen=True)
class StepFailure:
    """The step that failed a run: its task name, the line that says why, and its full log."""

    step: str
    error: str
    log: Path


class StepFailed(ProjectError):
    """A step of a local run failed; the message ends with the step's error line and the path of its log."""

    def __init__(self, failure: StepFailure):
        super().__init__(f"step {failure.step} failed: {failure.error}\n  its full log: {shown_path(failure.log)}")
        self.failure = failure


@dataclass
class _Step:
    name: str
    log: TextIO
    path: Path
    started: float
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    ended: bool = False  # kfp.local still writes the step's outputs, then a rule, after its status line


class RunProgress:
    """Routes kfp.local's output of one run (see the module docstring).

    ``figure(task)`` is the key figure of a step that succeeded (counts, accuracy, version …), read from
    what the step left, or ``""``.
    """

    def __init__(self, log_dir: Path, console: TextIO, figure: Callable[[str], str], verbose: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.log_dir, self.console, self.figure, self.verbose, self.clock = log_dir, console, figure, verbose, clock
        self.failure: StepFailure | None = None
        self._steps: dict[int, _Step] = {}  # thread id -> the step that thread runs
        self._partial: dict[int, str] = {}  # thread id -> text written since its last newline
        self._lock = threading.RLock()
        log_dir.mkdir(parents=True, exist_ok=True)
        self._pipeline_log = open(log_dir / PIPELINE_LOG, "w")  # noqa: SIM115 (closed in close())

    def announce(self, name: str, text: str) -> None:
        with self._lock:
            announce(self.console, name, text)

    def on_record(self, record: logging.LogRecord) -> None:
        """A log record of kfp.local's, before its handler writes it (into the step's log, through :meth:`write`)."""
        message = _ANSI.sub("", record.getMessage())
        with self._lock:
            if started := _TASK_START.fullmatch(message):
                self._start(started["task"])
            elif ended := _TASK_END.fullmatch(message):
                self._end(ended["task"], ended["status"] == "SUCCESS")

    def write(self, text: str) -> None:
        """Text kfp.local wrote to ``sys.stdout``: complete lines go to the log of the writing thread's step."""
        thread = threading.get_ident()
        with self._lock:
            if self.verbose:
                self.console.write(text)
            pending = self._partial.pop(thread, "")
            if text == KFP_INDENT and not pending:
                return  # kfp.local's indent before a line of the step's output; the log keeps the line as printed
            *lines, rest = (pending + text).split("\n")
            if rest:
                self._partial[thread] = rest
            for line in lines:
                self._line(thread, _ANSI.sub("", line))

    def flush(self) -> None:
        with self._lock:
            self.console.flush()
            for step in self._steps.values():
                step.log.flush()
            self._pipeline_log.flush()

    def close(self) -> None:
        with self._lock:
            for thread, rest in self._partial.items():
                self._line(thread, rest)
            self._partial.clear()
            for step in self._steps.values():
                step.log.close()
            self._pipeline_log.close()

    def _start(self, task: str) -> None:
        path = self.log_dir / f"{task}.log"
        previous = self._steps.get(threading.get_ident())
        if previous is not None:
            previous.log.close()
        self._steps[threading.get_ident()] = _Step(task, open(path, "w"), path, self.clock())  # noqa: SIM115
        if not self.verbose:
            self.announce(task, "started")

    def _end(self, task: str, succeeded: bool) -> None:
        step = self._steps.get(threading.get_ident())
        if step is None or step.name != task:
            return  # not a step this object saw start (cannot happen with kfp.local 2.17's dispatcher)
        seconds = self.clock() - step.started
        step.ended = True
        if not succeeded:
            self.failure = self.failure or StepFailure(task, error_line(list(step.tail)), step.path)
        if self.verbose:
            return
        if not succeeded:
            self.announce(task, f"FAILED after {seconds:.1f}s")
        elif figure := self.figure(task):
            self.announce(task, f"done in {seconds:.1f}s: {figure}")
        else:
            self.announce(task, f"done in {seconds:.1f}s")

    def _line(self, thread: int, line: str) -> None:
        step = self._steps.get(thread)
        if step is None:
            self._pipeline_log.write(line + "\n")
            return
        step.log.write(line + "\n")
        step.tail.append(line)
        if step.ended and _RULE.fullmatch(line):  # kfp.local's rule after a task: what follows is not the step's
            step.log.close()
            del self._steps[thread]
            return
        if not self.verbose and (epoch := _EPOCH.match(line)):
            self.announce(step.name, f"epoch {epoch['epoch']}: loss {epoch['loss']}, train_acc {epoch['acc']}, "
                                     f"val_acc {epoch['val_acc']}")


def announce(console: TextIO, name: str, text: str) -> None:
    """One console line about ``name``: a step, or a stage of the run such as the preflight."""
    # On a terminal the training step draws its progress bar on the current line: clear that line first.
    console.write(f"{_CLEAR_LINE if console.isatty() else ''}{name:<{NAME_WIDTH}} {text}\n")
    console.flush()


def error_line(lines: list[str]) -> str:
    """The line that says why a step failed: the exception line of its last traceback (the first line after the
    frames, without the module path: ``DataError: no files in …``), else its last non-empty line."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    for line in lines[starts[-1] + 1:] if starts else ():
        if line and not line[0].isspace():
            return _QUALIFIED.sub("", line, count=1)
    return next((line.strip() for line in reversed(lines) if line.strip()), "(the step printed nothing)")


def shown_path(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it (what a person types), else absolute."""
    absolute = Path(os.path.abspath(path))  # not resolve(): a path through the ``latest`` link stays one
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


class _Output(io.TextIOBase):
    """``sys.stdout`` during a run: hands every write to the run's :class:`RunProgress`."""

    def __init__(self, progress: RunProgress, encoding: str | None):
        self.progress, self._encoding = progress, encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding or "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.progress.write(text)
        return len(text)

    def flush(self) -> None:
        self.progress.flush()


class _Events(logging.Filter):
    """On the root logger: shows every record to the run's :class:`RunProgress`; drops none."""

    def __init__(self, progress: RunProgress):
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.on_record(record)
        return True


@contextmanager
def following(progress: RunProgress) -> Iterator[RunProgress]:
    """Route kfp.local's output through ``progress`` while the block runs (a kfp.local run); silence the
    warnings that do not apply (:data:`QUIET_WARNINGS`) unless ``progress.verbose``."""
    events, root, stdout = _Events(progress), logging.getLogger(), sys.stdout
    root.addFilter(events)
    sys.stdout = _Output(progress, getattr(stdout, "encoding", None))
    try:
        with warnings.catch_warnings():
            for category, message in () if progress.verbose else QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield progress
    finally:
        sys.stdout = stdout
        root.removeFilter(events)
        progress.close()


def key_figure(task: str, output: dict[str, Any]) -> str:
    """The figure worth a glance in a step's ``executor_output.json`` (``output``), by the pipeline's task name."""
    describe = _FIGURES.get(task)
    return describe(output) if describe else ""


def _metadata(output: dict[str, Any], name: str) -> dict[str, Any]:
    artifacts = output.get("artifacts", {}).get(name, {}).get("artifacts") or [{}]
    return artifacts[0].get("metadata") or {}


def _prepared(output: dict[str, Any]) -> str:
    data = _metadata(output, "dataset")
    counts = data.get("counts", {})
    figure = ", ".join(f"{counts[s]} {s}" for s in ("train", "val", "test") if s in counts) + f" images, {data.get('classes')} classes"
    extra = [f"{data[k]} {k.replace('_', ' ')}" for k in ("unreadable", "duplicates_across_splits") if data.get(k)]
    return "; ".join([figure, *extra])


def _trained(output: dict[str, Any]) -> str:
    best, epoch = _metadata(output, "metrics").get("best_val_accuracy"), _metadata(output, "model").get("best_epoch")
    return f"best val_acc {best:.4f} (epoch {epoch})" if best is not None else ""


def _evaluated(output: dict[str, Any]) -> str:
    metrics, decision = _metadata(output, "metrics"), output.get("parameterValues", {}).get("Output", "?")
    if "accuracy" not in metrics:
        return decision
    champion = f" (production {metrics['champion_accuracy']:.4f})" if "champion_accuracy" in metrics else ""
    return f"test accuracy {metrics['accuracy']:.4f}{champion}, {decision}"


def _pushed(output: dict[str, Any]) -> str:
    version = output.get("parameterValues", {}).get("version")
    return f"registered version {version}" if version is not None else ""


def _deployed(output: dict[str, Any]) -> str:
    url = output.get("parameterValues", {}).get("Output")
    return f"serving at {url}" if url else ""


def _drift(output: dict[str, Any]) -> str:
    verdict, records = output.get("parameterValues", {}).get("Output"), _metadata(output, "metrics").get("records")
    return f"{verdict} ({records:.0f} records)" if verdict and records is not None else verdict or ""


def _retrained(output: dict[str, Any]) -> str:
    from pipelines.retrain import local_version

    run = output.get("parameterValues", {}).get("Output")
    if (version := local_version(run)) is not None:
        return f"the local training run registered version {version}"
    return f"started run {run}" if run else ""


_FIGURES: dict[str, Callable[[dict[str, Any]], str]] = {
    "prepare-data": _prepared, "train-model": _trained, "evaluate-model": _evaluated, "push-model": _pushed,
    "deploy-model": _deployed, "drift-report": _drift, "start-training": _retrained,
}
