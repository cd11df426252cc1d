"""The ``trainjob`` launcher against a FAKE Kubernetes API over HTTP.

A Kubeflow Trainer with JobSet and GPU nodes is the one boundary these tests cannot run here, so
:class:`FakeApi` stands in for the API server: a real HTTP server on loopback that speaks the routes the
launcher uses (create/get/delete ``trainer.kubeflow.org/v1alpha1`` trainjobs, list pods by label selector,
follow a pod's log) and plays back one scripted (TrainJob conditions, pods) snapshot per status poll. The
launcher talks to it through the real :class:`~components.kube.KubernetesJobClient` and the official
``kubernetes`` client, so requests, serialization and error translation (409) are the real code too.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client as k8s

from components.errors import TrainingError
from components.kube import TRAINJOB, KubernetesJobClient
from components.training.config import TrainConfig
from components.training.pytorchjob import job_name
from components.training.pytorchjob_launcher import Cancelled, launch_job
from components.training.trainjob import TrainJobSettings, build_network_policy, build_trainjob
from components.training.trainjob_launcher import run_trainjob
from tests.helpers import TickingClock

RUN_ID = "4f1c2b9e-1234-4cde-9abc-0123456789ab"
NAME = job_name(RUN_ID)
NS = "kubeflow-user"
BLOB = "https://acct.blob.core.windows.net/data/kfp"
JOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
POLICIES = f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"
POLICY = f"{NAME}-peers"


@dataclass(frozen=True)
class Pod:
    job: str  # replicated job: ps or node
    index: int
    phase: str
    attempt: int = 0  # JobSet restart attempt
    exit_code: int | None = None
    finished_at: str | None = None

    @property
    def name(self) -> str:
        return f"{NAME}-{self.job}-0-{self.index}-a{self.attempt}"

    def to_api(self) -> dict[str, Any]:
        state = {"terminated": {"exitCode": self.exit_code, "finishedAt": self.finished_at}} if self.exit_code is not None else {"running": {}}
        labels = {"jobset.sigs.k8s.io/jobset-name": NAME, "jobset.sigs.k8s.io/replicatedjob-name": self.job,
                  "batch.kubernetes.io/job-completion-index": str(self.index), "jobset.sigs.k8s.io/restart-attempt": str(self.attempt)}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": self.name, "namespace": NS, "uid": self.name, "labels": labels},
                "spec": {"containers": [{"name": self.job, "image": "img:1"}]},
                "status": {"phase": self.phase, "containerStatuses": [
                    {"name": self.job, "ready": self.phase == "Running", "restartCount": 0, "image": "img:1", "imageID": "x",
                     "state": state}] if self.phase != "Pending" else []}}


def condition(kind: str, message: str = "") -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": kind, "message": message, "lastTransitionTime": "2026-12-02T07:00:00Z"}


CREATED = [condition("Created")]


@dataclass
class FakeApi:
    """Scripted API server state; the handler below serves it over HTTP."""

    script: list[tuple[list[dict[str, str]], list[Pod]]]
    logs: dict[str, list[str]] = field(default_factory=dict)  # pod name -> lines
    exists: bool = False
    reject: str = ""  # an admission webhook's refusal of the job (HTTP 422)
    on_poll: Callable[[int], None] | None = None
    created: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)  # (name, propagationPolicy)
    calls: list[str] = field(default_factory=list)  # "create policy", "create job", "own policy", "delete policy"
    policy_owner: list[dict[str, Any]] = field(default_factory=list)
    log_requests: list[tuple[str, str]] = field(default_factory=list)  # (pod, container)
    broken_logs: set[str] = field(default_factory=set)  # pods whose log connection drops mid-stream
    polls: int = 0
    policy: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> tuple[list[dict[str, str]], list[Pod]]:
        return self.script[min(max(self.polls, 1), len(self.script)) - 1]


def handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

        def reply(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def drop(self, text: str) -> None:
            """Promise more bytes than are sent, then close: the client sees the stream break."""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text) + 1000))
            self.end_headers()
            self.wfile.write(text.encode())
            self.wfile.flush()
            self.close_connection = True

        def body(self) -> dict[str, Any]:
            return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

        def do_POST(self) -> None:
            manifest = self.body()
            if urlparse(self.path).path == POLICIES:
                api.calls.append("create policy")
                api.policy = manifest
                return self.reply(201, manifest)
            api.calls.append("create job")
            assert urlparse(self.path).path == JOBS and parse_qs(urlparse(self.path).query)["fieldValidation"] == ["Strict"]
            if api.reject:
                return self.reply(422, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422, "message": api.reject})
            if api.exists:
                return self.reply(409, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409,
                                        "message": f'trainjobs.trainer.kubeflow.org "{manifest["metadata"]["name"]}" already exists'})
            api.created.append(manifest)
            self.reply(201, {**manifest, "metadata": {**manifest["metadata"], "uid": "job-uid-1"}})

        def do_PATCH(self) -> None:
            assert urlparse(self.path).path == f"{POLICIES}/{POLICY}"
            api.calls.append("own policy")
            api.policy_owner.extend(self.body()["metadata"]["ownerReferences"])
            self.reply(200, api.policy)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == f"{JOBS}/{NAME}":
                api.polls += 1
                if api.on_poll:
                    api.on_poll(api.polls)
                conditions, _ = api.snapshot()
                return self.reply(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                                        "metadata": {"name": NAME, "namespace": NS}, "status": {"conditions": conditions}})
            if url.path == f"/api/v1/namespaces/{NS}/pods":
                assert query["labelSelector"] == [f"jobset.sigs.k8s.io/jobset-name={NAME}"]
                return self.reply(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [p.to_api() for p in api.snapshot()[1]]})
            match = re.fullmatch(f"/api/v1/namespaces/{NS}/pods/([^/]+)/log", url.path)
            if match:
                api.log_requests.append((match.group(1), query["container"][0]))
                assert query["follow"][0].lower() == "true"
                text = "".join(f"{line}\n" for line in api.logs.get(match.group(1), []))
                if match.group(1) in api.broken_logs:
                    return self.drop(text)
                return self.reply(200, text, "text/plain")
            self.reply(404, {"kind": "Status", "code": 404, "message": f"no route {url.path}"})

        def do_DELETE(self) -> None:
            url, body = urlparse(self.path), self.body()
            if url.path == f"{POLICIES}/{POLICY}":
                api.calls.append("delete policy")
                return self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})  # the policy travels as a query parameter or in DeleteOptions
            policy = parse_qs(url.query).get("propagationPolicy", [body.get("propagationPolicy", "")])[0]
            api.deleted.append((url.path.rsplit("/", 1)[-1], policy))
            self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    return Handler


@contextmanager
def serving(api: FakeApi) -> Iterator[KubernetesJobClient]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(api))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        configuration = k8s.Configuration(host=f"http://127.0.0.1:{server.server_port}")
        yield KubernetesJobClient(NS, TRAINJOB, api_client=k8s.ApiClient(configuration))
    finally:
        server.shutdown()
        server.server_close()


def cluster_config(**overrides: Any) -> TrainConfig:
    return TrainConfig(store_uri=BLOB, dataset_prefix="prepared/0123abcd", output_prefix=f"runs/{RUN_ID}/model",
                       num_ps=2, num_workers=2, **overrides)


def launch(api: FakeApi, timeout_s: float = 1000.0, max_restarts: int | None = 3) -> str:
    out = io.StringIO()
    manifest = build_trainjob(cluster_config(), RUN_ID, TrainJobSettings(namespace=NS), timeout_s=int(timeout_s))
    with serving(api) as client:
        launch_job(manifest, client, timeout_s, out, poll_s=0, clock=TickingClock(10), max_restarts=max_restarts,
                   network_policy=build_network_policy(manifest))
    return out.getvalue()


ALL = [("ps", 0), ("ps", 1), ("node", 0), ("node", 1)]


def pods(phase: str, attempt: int = 0, **codes: int) -> list[Pod]:
    """All four pods in ``phase``; ``codes``: ``node_1=1`` gives node-1 that exit code."""
    return [Pod(j, i, phase, attempt, codes.get(f"{j}_{i}", 0 if phase == "Succeeded" else None)) for j, i in ALL]


def test_a_successful_trainjob_is_created_streams_every_pod_s_log_and_succeeds() -> None:
    api = FakeApi([(CREATED, [Pod("ps", 0, "Pending"), Pod("node", 0, "Pending")]), (CREATED, pods("Running")),
                   ([*CREATED, condition("Complete", "jobset completed")], pods("Succeeded"))],
                  logs={p.name: [f"{p.job}-{p.index} line 1", f"{p.job}-{p.index} done"] for p in pods("Running")})
    out = launch(api)
    (created,) = api.created
    assert created["kind"] == "TrainJob" and created["metadata"]["name"] == NAME
    for job, index in ALL:
        assert f"[{job}-{index}] {job}-{index} line 1" in out and f"[{job}-{index}] {job}-{index} done" in out
    assert sorted(api.log_requests) == sorted((p.name, p.job) for p in pods("Running"))  # each pod's own container
    assert "[launcher] ps-0: Pending" in out and f"[launcher] TrainJob {NAME} succeeded" in out
    assert api.deleted == []  # kept for inspection; the runtime's TTL removes its pods


def test_a_failed_trainjob_fails_the_step_naming_the_first_failing_pod_and_its_last_lines() -> None:
    failed = [Pod("ps", 0, "Failed", exit_code=200, finished_at="2026-12-02T07:00:09Z"),
              Pod("ps", 1, "Running"), Pod("node", 0, "Running"),
              Pod("node", 1, "Failed", exit_code=1, finished_at="2026-12-02T07:00:01Z")]
    api = FakeApi([(CREATED, pods("Running")), ([*CREATED, condition("Failed", "jobset failed: PodFailurePolicy")], failed)],
                  logs={Pod("node", 1, "Running").name: ["Traceback (most recent call last):", "DataError: no prepared data set at …"],
                        Pod("ps", 0, "Running").name: ["RuntimeError: eof"]})
    with pytest.raises(TrainingError) as failure:
        launch(api)
    assert re.match(rf"(?s)TrainJob {NAME} failed: jobset failed: PodFailurePolicy; node-1 \(pod {NAME}-node-0-1-a0\) exited with code 1 "
                    r"\(permanent: bad configuration or data\); its last lines:\n  Traceback.*\n  DataError: no prepared data set",
                    str(failure.value))
    assert api.deleted == []


def test_a_trainjob_that_outlives_the_timeout_is_deleted_and_fails_the_step() -> None:
    api = FakeApi([(CREATED, [*pods("Running")[:3], Pod("node", 1, "Pending")])])
    with pytest.raises(TrainingError, match=rf"TrainJob {NAME} did not finish within 30 s \(job Created; node-0 Running, node-1 Pending, ps-0"):
        launch(api, timeout_s=30)
    assert api.deleted == [(NAME, "Foreground")]


def test_cancelling_the_step_with_sigterm_deletes_the_trainjob() -> None:
    def sigterm_on_second_poll(polls: int) -> None:
        if polls == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    api = FakeApi([(CREATED, pods("Running"))], on_poll=sigterm_on_second_poll)
    with pytest.raises(Cancelled, match="cancelled"):
        launch(api)
    assert api.deleted == [(NAME, "Foreground")]
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_name_taken_by_an_earlier_attempt_is_a_clear_error_not_a_reuse() -> None:
    api = FakeApi([(CREATED, [])], exists=True)
    with pytest.raises(TrainingError, match=rf"a TrainJob named '{NAME}' exists already in {NS}\. Job names are unique per pipeline run.*"
                                            rf"kubectl delete trainjob {NAME} -n {NS}"):
        launch(api)
    assert api.polls == 0 and api.deleted == []  # neither watched nor deleted: it is not ours
    assert api.calls == ["create policy", "create job"]  # the policy of that name stays with that earlier job


def test_a_restarted_jobset_is_followed_again_and_its_ranks_resume_from_the_checkpoint() -> None:
    first, second = pods("Running", attempt=0), pods("Running", attempt=1)
    api = FakeApi([(CREATED, first),
                   (CREATED, [Pod("node", 1, "Failed", 0, exit_code=137, finished_at="2026-12-02T07:00:05Z"), *first[:3]]),
                   (CREATED, second),
                   ([*CREATED, condition("Complete")], pods("Succeeded", attempt=1))],
                  logs={**{p.name: ["first life"] for p in first},
                        **{p.name: ["resuming from the checkpoint of step 100 (update 100)"] for p in second}})
    out = launch(api)
    assert "[node-1] first life" in out and "[node-1] resuming from the checkpoint of step 100 (update 100)" in out
    assert "[ps-0] resuming from the checkpoint of step 100" in out
    assert f"[launcher] TrainJob {NAME} restarted (attempt 1); its ranks resume from the latest checkpoint" in out
    assert f"TrainJob {NAME} succeeded" in out


def test_restarts_beyond_the_run_s_backoff_limit_delete_the_job_and_fail_the_step() -> None:
    api = FakeApi([(CREATED, pods("Running", attempt=0)), (CREATED, pods("Running", attempt=2))])
    with pytest.raises(TrainingError, match=rf"TrainJob {NAME} was restarted 2 times, more than the backoff limit 1"):
        launch(api, max_restarts=1)
    assert api.deleted == [(NAME, "Foreground")]


def test_run_trainjob_builds_the_job_and_runs_it_to_success() -> None:
    api = FakeApi([([*CREATED, condition("Complete")], pods("Succeeded"))])
    out = io.StringIO()
    with serving(api) as client:
        run_trainjob(cluster_config(), RUN_ID, 600, 3, TrainJobSettings(namespace=NS), client, out, poll_s=0)
    (created,) = api.created
    assert created["spec"]["runtimeRef"]["name"] == "kfp-ps-classifier-ps2"
    assert created["spec"]["activeDeadlineSeconds"] == 900  # the backstop, after the launcher's own timeout
    assert api.calls == ["create policy", "create job", "own policy"]  # isolated before its first pod exists
    assert api.policy["metadata"]["name"] == POLICY
    assert api.policy["spec"]["podSelector"] == {"matchLabels": {"jobset.sigs.k8s.io/jobset-name": NAME}}
    assert api.policy_owner == [{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "name": NAME, "uid": "job-uid-1"}]
    assert f"TrainJob {NAME} succeeded" in out.getvalue()


def test_the_trainjob_launcher_refuses_a_store_its_pods_cannot_reach_and_a_backoff_above_the_runtime_s() -> None:
    local = TrainConfig(store_uri="/home/me/store", dataset_prefix="p", output_prefix="o")
    with pytest.raises(TrainingError, match="expected an Azure Blob store URI .* trainjob launcher: its pods cannot read '/home/me/store'"):
        run_trainjob(local, RUN_ID, 60, 3, TrainJobSettings(NS), client=object())  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match=r"expected train_backoff_limit <= 5 for the trainjob launcher .* got 9"):
        run_trainjob(cluster_config(), RUN_ID, 60, 9, TrainJobSettings(NS), client=object())  # type: ignore[arg-type]


def test_a_log_stream_that_breaks_is_reported_and_the_watch_goes_on() -> None:
    running = pods("Running")
    api = FakeApi([(CREATED, running), ([*CREATED, condition("Complete")], pods("Succeeded"))],
                  logs={p.name: [f"{p.job}-{p.index} epoch 1"] for p in running}, broken_logs={running[2].name})
    out = launch(api)
    assert "[node-1] node-1 epoch 1" in out  # the other pods' logs are unaffected
    assert re.search(rf"\[launcher\] expected to follow the log of pod {running[2].name} \(node\), got \w+", out)
    assert f"TrainJob {NAME} succeeded" in out


def test_a_trainjob_s_conditions_map_to_the_launcher_s_phases() -> None:
    from components.kube import JobStatus, job_status

    complete = {"status": {"conditions": [condition("Complete", "done"), condition("Created")]}}  # a map, not a history
    assert job_status(complete, TRAINJOB) == JobStatus("Succeeded", "done")
    assert job_status({"status": {"conditions": [condition("Created")]}}, TRAINJOB) == JobStatus("Created")
    assert job_status({}, TRAINJOB) == JobStatus("Pending")


def test_the_train_step_routes_launcher_trainjob_to_the_trainjob_launcher(tmp_path) -> None:
    from components.store import open_store
    from components.training.job import train

    local = TrainConfig(store_uri=str(tmp_path), dataset_prefix="p", output_prefix="o")
    with pytest.raises(TrainingError, match="for the trainjob launcher: its pods cannot read"):
        train(local, open_store(str(tmp_path)), "trainjob", 60, 3, RUN_ID)


def test_a_job_the_api_server_refuses_fails_the_step_with_its_message_and_leaves_no_policy() -> None:
    refusal = 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: ClusterTrainingRuntime kfp-ps-classifier-ps2 not found'
    api = FakeApi([(CREATED, [])], reject=refusal)
    with pytest.raises(TrainingError, match=rf"expected the API server to create TrainJob '{NAME}', got HTTP 422: admission webhook .* not found"):
        launch(api)
    assert api.calls == ["create policy", "create job", "delete policy"] and api.polls == 0
