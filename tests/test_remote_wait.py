"""The wait loop: which run states end it, how it times out, and what it retries (fake clock, stub client)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import kfp_server_api
import pytest
import urllib3

from pipelines.remote import RemoteError, RunFailedError, RunTimeoutError, wait_for_run

RUN = "run-1"


@dataclass
class FakeClock:
    """Time that moves only when the code under test sleeps."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class StubClient:
    """Answers get_run with the given states in turn (the last one repeats); an exception item is raised."""

    endpoint = "https://kubeflow.example.com/pipeline"

    def __init__(self, *answers: Any, error: str | None = None) -> None:
        self.answers = list(answers)
        self.error = error
        self.polls = 0

    def get_run(self, run_id: str) -> Any:
        assert run_id == RUN
        self.polls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        error = SimpleNamespace(message=self.error) if self.error else None
        return SimpleNamespace(run_id=run_id, state=answer, error=error)


def wait(client: StubClient, clock: FakeClock, timeout_s: float = 3600, poll_s: float = 15, **kwargs: Any) -> str:
    stub: Any = client  # stands in for the KfpClient: only get_run and endpoint are used
    return wait_for_run(stub, RUN, timeout_s, poll_s, clock=clock, sleep=clock.sleep, **kwargs)


def test_succeeded_ends_the_wait_after_pending_and_running() -> None:
    clock = FakeClock()
    client = StubClient("PENDING", "RUNNING", "RUNNING", "SUCCEEDED")
    assert wait(client, clock) == "SUCCEEDED"
    assert client.polls == 4
    assert clock.sleeps == [15, 15, 15]


@pytest.mark.parametrize("state", ["FAILED", "CANCELED", "CANCELING", "SKIPPED", "ERROR"])
def test_failed_error_skipped_and_cancelled_runs_are_failures(state: str) -> None:
    clock = FakeClock()
    with pytest.raises(RunFailedError) as error:
        wait(StubClient("RUNNING", state), clock)
    assert error.value.state == state
    assert f"run {RUN} ended {state}, expected SUCCEEDED" in str(error.value)
    assert f"https://kubeflow.example.com/pipeline/#/runs/details/{RUN}" in str(error.value)


@pytest.mark.parametrize("state, expected", [("Succeeded", "SUCCEEDED"), ("Failed", "FAILED"), ("Error", "ERROR")])
def test_states_are_compared_case_insensitively_as_older_backends_capitalize_them(state: str, expected: str) -> None:
    client = StubClient(state)
    if expected == "SUCCEEDED":
        assert wait(client, FakeClock()) == expected
    else:
        with pytest.raises(RunFailedError, match=f"ended {expected}"):
            wait(client, FakeClock())


def test_the_failure_message_includes_the_runs_error() -> None:
    with pytest.raises(RunFailedError, match="ended FAILED, expected SUCCEEDED: train_model: exit code 1"):
        wait(StubClient("FAILED", error="train_model:\n exit code 1"), FakeClock())


@pytest.mark.parametrize("state", ["PAUSED", "RUNTIME_STATE_UNSPECIFIED", None, "SOMETHING_NEW"])
def test_non_terminal_or_unknown_states_keep_the_wait_going(state: str | None) -> None:
    client = StubClient(state, state, "SUCCEEDED")
    assert wait(client, FakeClock()) == "SUCCEEDED"
    assert client.polls == 3


def test_a_run_that_does_not_end_times_out_after_a_last_poll_at_the_deadline() -> None:
    clock = FakeClock()
    client = StubClient("RUNNING")
    with pytest.raises(RunTimeoutError) as error:
        wait(client, clock, timeout_s=60, poll_s=15)
    assert clock.now == 60
    assert client.polls == 5  # at 0, 15, 30, 45 and 60 s
    assert f"run {RUN} still RUNNING after 60 s" in str(error.value)
    assert "keeps running on the cluster" in str(error.value)


def test_the_last_sleep_is_shortened_to_the_deadline() -> None:
    clock = FakeClock()
    with pytest.raises(RunTimeoutError):
        wait(StubClient("PENDING"), clock, timeout_s=20, poll_s=15)
    assert clock.sleeps == [15, 5]


def test_state_changes_are_reported_once_each_with_the_time_waited() -> None:
    seen: list[tuple[str, float]] = []
    client = StubClient("PENDING", "PENDING", "RUNNING", "RUNNING", "SUCCEEDED")
    wait(client, FakeClock(), on_state=lambda state, waited: seen.append((state, waited)))
    assert seen == [("PENDING", 0), ("RUNNING", 30), ("SUCCEEDED", 60)]


def test_transient_api_and_connection_errors_are_retried() -> None:
    client = StubClient(
        kfp_server_api.ApiException(status=503, reason="Service Unavailable"),
        urllib3.exceptions.ProtocolError("connection reset"),
        "RUNNING",
        "SUCCEEDED",
    )
    assert wait(client, FakeClock()) == "SUCCEEDED"
    assert client.polls == 4


def test_too_many_transient_errors_in_a_row_end_the_wait() -> None:
    client = StubClient(kfp_server_api.ApiException(status=502, reason="Bad Gateway"))
    with pytest.raises(RemoteError, match=f"could not read the state of run {RUN}: HTTP 502 Bad Gateway"):
        wait(client, FakeClock(), max_poll_errors=3)
    assert client.polls == 3


@pytest.mark.parametrize(
    "status, reason, message",
    [
        (404, "Not Found", "HTTP 404 Not Found"),
        (401, "Unauthorized", "HTTP 401 Unauthorized, expected a valid bearer token and the token was rejected"),
    ],
)
def test_other_api_errors_end_the_wait_at_once(status: int, reason: str, message: str) -> None:
    client = StubClient(kfp_server_api.ApiException(status=status, reason=reason))
    with pytest.raises(RemoteError, match=message):
        wait(client, FakeClock())
    assert client.polls == 1
