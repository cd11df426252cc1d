"""upload, submit and schedule over HTTP: the REAL kfp client against a FAKE of the KFP v2beta1 REST API.

The fake (tests/fake_kfp_api.py) runs on loopback because the KFP backend is the one boundary these tests cannot
run. The assertions are on the requests the real ``kfp.Client`` sends: paths, query strings, JSON bodies, the
multipart upload and the bearer token; and on what each command prints and returns.
"""

from __future__ import annotations

import argparse
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from kfp import compiler

from pipelines import remote
from pipelines.remote_cli import add_remote_commands
from tests.fake_kfp_api import API, FakeKfpApi, Recorded
from tests.standin_pipeline import SIGNATURE, standin_pipeline

TOKEN = "test-token-not-a-secret"
NAMESPACE = "team-a"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (remote.ENDPOINT_ENV, remote.TOKEN_ENV, remote.UI_ENDPOINT_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeKfpApi]:
    api = FakeKfpApi(token=TOKEN, allowed_namespaces={NAMESPACE})
    api.start()
    api.add_experiment("Default", NAMESPACE)
    api.add_experiment("Default", "team-b")  # same name, other namespace: must never be picked
    yield api
    api.stop()


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("package") / "standin.yaml"
    compiler.Compiler().compile(standin_pipeline, str(path))
    return path


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def client(fake: FakeKfpApi) -> remote.KfpClient:
    return remote.connect(fake.url, NAMESPACE, TOKEN)


class Cli:
    """The remote commands as the main CLI registers them, with a compile_fn that copies the stand-in package."""

    def __init__(self, fake: FakeKfpApi, package: Path, token_file: Path, capsys: pytest.CaptureFixture) -> None:
        self.fake, self.package, self.token_file, self.capsys = fake, package, token_file, capsys
        self.compiled: list[str] = []

    def compile(self, pipeline: str, path: str) -> None:
        self.compiled.append(path)
        shutil.copy(self.package, path)

    def __call__(self, *argv: str, connection: bool = True) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="pipelines")
        add_remote_commands(parser.add_subparsers(dest="command", required=True), lambda pipeline: SIGNATURE, self.compile)
        options = ["--host", self.fake.url, "--namespace", NAMESPACE, "--token-file", str(self.token_file)]
        args = parser.parse_args([argv[0], *(options if connection else []), *argv[1:]])
        code = args.func(args)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(fake: FakeKfpApi, package: Path, token_file: Path, capsys: pytest.CaptureFixture) -> Cli:
    return Cli(fake, package, token_file, capsys)


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert TOKEN not in err


# --- upload -----------------------------------------------------------------------------------------------


def test_upload_creates_the_pipeline_in_the_namespace_then_uploads_the_package_as_a_named_version(
    fake: FakeKfpApi, client: remote.KfpClient, package: Path
) -> None:
    version = remote.upload(client, package, "standin-classifier", "0123456789ab")

    assert version.created and version.version_name == "0123456789ab"
    (create,) = fake.calls("POST", f"{API}/pipelines")
    assert create.json() == {
        "display_name": "standin-classifier", "name": "standin-classifier", "namespace": NAMESPACE,
        "description": "A stand-in pipeline for the remote-command tests.",
    }
    (upload,) = fake.calls("POST", f"{API}/pipelines/upload_version")
    assert upload.query["name"] == "0123456789ab"
    assert upload.query["pipelineid"] == version.pipeline_id
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    filename, content = upload.multipart()["uploadfile"]
    assert filename == package.name and content == package.read_bytes()
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake.requests)


def test_upload_of_the_same_version_twice_uploads_once(
    fake: FakeKfpApi, client: remote.KfpClient, package: Path
) -> None:
    first = remote.upload(client, package, "standin-classifier", "0123456789ab")
    second = remote.upload(client, package, "standin-classifier", "0123456789ab")

    assert not second.created
    assert (second.pipeline_id, second.version_id) == (first.pipeline_id, first.version_id)
    assert len(fake.calls("POST", f"{API}/pipelines/upload_version")) == 1
    lookup = fake.calls("GET", f"{API}/pipelines/{first.pipeline_id}/versions")[-1]
    assert '"stringValue": "0123456789ab"' in lookup.query["filter"]


def test_upload_of_a_new_commit_adds_a_version_to_the_existing_pipeline(
    fake: FakeKfpApi, client: remote.KfpClient, package: Path
) -> None:
    first = remote.upload(client, package, "standin-classifier", "aaaaaaaaaaaa")
    second = remote.upload(client, package, "standin-classifier", "bbbbbbbbbbbb")

    assert second.created and second.pipeline_id == first.pipeline_id and second.version_id != first.version_id
    assert len(fake.calls("POST", f"{API}/pipelines")) == 1
    assert [r.query["name"] for r in fake.calls("POST", f"{API}/pipelines/upload_version")] == [
        "aaaaaaaaaaaa", "bbbbbbbbbbbb",
    ]


def test_upload_that_loses_a_race_for_the_same_version_returns_the_winners_version(
    fake: FakeKfpApi, client: remote.KfpClient, package: Path
) -> None:
    pipeline_id = remote.create_pipeline(client, "standin-classifier", "")

    def concurrent_upload(request: Recorded) -> None:
        if request.path == f"{API}/pipelines/upload_version" and not fake.versions:
            fake.versions["version-winner"] = {
                "pipeline_id": pipeline_id, "pipeline_version_id": "version-winner",
                "display_name": "0123456789ab", "name": "0123456789ab",
            }

    fake.before_request = concurrent_upload
    version = remote.upload(client, package, "standin-classifier", "0123456789ab")

    assert (version.version_id, version.created) == ("version-winner", False)
    assert len(fake.calls("POST", f"{API}/pipelines/upload_version")) == 1  # answered 409 Conflict
    assert list(fake.versions) == ["version-winner"]


def test_upload_command_compiles_the_pipeline_and_prints_the_version_link(cli: Cli, fake: FakeKfpApi) -> None:
    code, out, err = cli("upload", "--version-name", "0123456789ab")

    assert (code, err) == (0, "")
    assert len(cli.compiled) == 1 and cli.compiled[0].endswith("pipeline.yaml")
    (version,) = fake.versions.values()
    assert out == (
        f"Pipeline 'standin-classifier' version '0123456789ab' uploaded: {fake.url}/#/pipelines/details/"
        f"{version['pipeline_id']}/version/{version['pipeline_version_id']}\n"
    )
    code, out, _ = cli("upload", "--version-name", "0123456789ab")
    assert code == 0 and "already uploaded" in out


def test_upload_command_uses_a_given_package_and_pipeline_name_without_compiling(
    cli: Cli, fake: FakeKfpApi, package: Path
) -> None:
    code, out, _ = cli(
        "upload", "--package", str(package), "--pipeline-name", "team-classifier", "--version-name", "v1"
    )

    assert code == 0 and cli.compiled == []
    assert [p["display_name"] for p in fake.pipelines.values()] == ["team-classifier"]


def test_upload_command_reads_endpoint_and_token_from_the_environment(
    cli: Cli, fake: FakeKfpApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(remote.ENDPOINT_ENV, fake.url)
    monkeypatch.setenv(remote.TOKEN_ENV, TOKEN)

    code, _, err = cli("upload", "--namespace", NAMESPACE, "--version-name", "v1", connection=False)

    assert (code, err) == (0, "")
    assert fake.requests and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)


# --- submit -----------------------------------------------------------------------------------------------


def test_submit_starts_a_run_of_the_uploaded_version_with_typed_params_and_prints_its_url(
    cli: Cli, fake: FakeKfpApi
) -> None:
    code, out, err = cli(
        "submit", "--version-name", "v1", "--param", "epochs=3", "--param", "use_gpu=true",
        "--param", "learning_rate=0.05", "--run-name", "ci-42", "--service-account", "pipeline-runner",
    )

    assert (code, err) == (0, "")
    (version,) = fake.versions.values()
    (run,) = fake.calls("POST", f"{API}/runs")
    default_in_team_a = next(e for e in fake.experiments.values() if e["namespace"] == NAMESPACE)
    assert run.json() == {
        "experiment_id": default_in_team_a["experiment_id"],
        "display_name": "ci-42",
        "pipeline_version_reference": {
            "pipeline_id": version["pipeline_id"], "pipeline_version_id": version["pipeline_version_id"],
        },
        "runtime_config": {"parameters": {"epochs": 3, "use_gpu": True, "learning_rate": 0.05}},
        "service_account": "pipeline-runner",
    }
    (run_id,) = fake.runs
    assert out.splitlines()[-1] == f"Run {run_id} started: {fake.url}/#/runs/details/{run_id}"
    assert fake.calls("GET", f"{API}/runs/.*") == []  # no --wait: no polling


def test_submit_wait_exits_zero_when_the_run_succeeds(cli: Cli, fake: FakeKfpApi) -> None:
    fake.run_states = ["PENDING", "RUNNING", "SUCCEEDED"]

    code, out, err = cli("submit", "--version-name", "v1", "--wait", "--timeout", "10", "--poll", "0.01")

    assert (code, err) == (0, "")
    (run_id,) = fake.runs
    assert len(fake.calls("GET", f"{API}/runs/{run_id}")) == 3
    assert out.splitlines()[-1] == f"Run {run_id} SUCCEEDED"


@pytest.mark.parametrize("final", ["FAILED", "CANCELED", "CANCELING"])
def test_submit_wait_exits_one_with_the_state_when_the_run_fails_or_is_cancelled(
    cli: Cli, fake: FakeKfpApi, final: str
) -> None:
    fake.run_states = ["RUNNING", final]

    code, _, err = cli("submit", "--version-name", "v1", "--wait", "--timeout", "10", "--poll", "0.01")

    (run_id,) = fake.runs
    assert_one_line_error(code, err, f"run {run_id} ended {final}, expected SUCCEEDED")


def test_submit_wait_gives_up_at_the_timeout_and_says_the_run_goes_on(cli: Cli, fake: FakeKfpApi) -> None:
    fake.run_states = ["RUNNING"]

    code, _, err = cli("submit", "--version-name", "v1", "--wait", "--timeout", "0.05", "--poll", "0.01")

    assert_one_line_error(code, err, "still RUNNING after 0.05 s", "keeps running on the cluster")


def test_submit_to_an_unknown_experiment_fails_and_names_the_existing_ones(cli: Cli, fake: FakeKfpApi) -> None:
    code, _, err = cli("submit", "--version-name", "v1", "--experiment", "nightly")

    assert_one_line_error(code, err, "expected an experiment named 'nightly' in namespace 'team-a'", "'Default'")
    assert fake.calls("POST", f"{API}/runs") == [] and fake.calls("POST", f"{API}/experiments") == []


def test_submit_to_an_archived_experiment_fails_before_starting_a_run(cli: Cli, fake: FakeKfpApi) -> None:
    fake.experiments[fake.add_experiment("old", NAMESPACE)]["storage_state"] = "ARCHIVED"

    code, _, err = cli("submit", "--version-name", "v1", "--experiment", "old")

    assert_one_line_error(code, err, "expected experiment 'old' in namespace 'team-a' to be active, found it archived")
    assert fake.calls("POST", f"{API}/runs") == []


def test_submit_creates_the_experiment_only_when_asked(cli: Cli, fake: FakeKfpApi) -> None:
    code, _, _ = cli("submit", "--version-name", "v1", "--experiment", "nightly", "--create-experiment")

    assert code == 0
    (create,) = fake.calls("POST", f"{API}/experiments")
    assert create.json() == {"display_name": "nightly", "namespace": NAMESPACE}
    (run,) = fake.calls("POST", f"{API}/runs")
    assert fake.experiments[run.json()["experiment_id"]]["display_name"] == "nightly"


def test_submit_rejects_an_unknown_param_before_contacting_the_endpoint(cli: Cli, fake: FakeKfpApi) -> None:
    code, _, err = cli("submit", "--version-name", "v1", "--param", "epoch=3")

    assert_one_line_error(code, err, "unknown pipeline parameter 'epoch'", "data_uri, epochs, learning_rate, use_gpu")
    assert fake.requests == []


# --- schedule ---------------------------------------------------------------------------------------------


NIGHTLY = {"--cron": "0 0 2 * * *", "--version-name": "v1", "--param": "epochs=5"}


def nightly(overrides: dict[str, str], *flags: str) -> list[str]:
    """``schedule --name nightly`` with the NIGHTLY options, some replaced, plus flags."""
    options = {**NIGHTLY, **overrides}
    return ["schedule", "--name", "nightly", *[item for pair in options.items() for item in pair], *flags]


def test_schedule_creates_a_recurring_run_with_cron_trigger_concurrency_one_and_no_catchup(
    cli: Cli, fake: FakeKfpApi
) -> None:
    code, out, err = cli("schedule", "--name", "nightly", "--cron", "0 0 2 * * *", "--version-name", "v1",
                         "--param", "epochs=5")

    assert (code, err) == (0, "")
    (version,) = fake.versions.values()
    (create,) = fake.calls("POST", f"{API}/recurringruns")
    body = create.json()
    assert body["display_name"] == "nightly"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert str(body["max_concurrency"]) == "1" and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["pipeline_version_reference"] == {
        "pipeline_id": version["pipeline_id"], "pipeline_version_id": version["pipeline_version_id"],
    }
    assert body["runtime_config"] == {"parameters": {"epochs": 5}}
    assert fake.experiments[body["experiment_id"]]["namespace"] == NAMESPACE
    (recurring_id,) = fake.recurring_runs
    assert out.splitlines()[-1] == (
        f"Recurring run 'nightly' created, cron '0 0 2 * * *': {fake.url}/#/recurringrun/details/{recurring_id}"
    )


def test_schedule_again_with_the_same_settings_changes_nothing(cli: Cli, fake: FakeKfpApi) -> None:
    cli(*nightly({}))
    code, out, _ = cli(*nightly({}))

    assert code == 0 and "'nightly' unchanged" in out
    assert len(fake.calls("POST", f"{API}/recurringruns")) == 1
    assert fake.calls("DELETE", f"{API}/recurringruns/.*") == []


@pytest.mark.parametrize(
    "overrides, flags, expected",
    [
        ({"--cron": "0 30 3 * * *"}, (), "cron '0 0 2 * * *' -> '0 30 3 * * *'"),
        ({"--version-name": "v2"}, (), "pipeline version"),
        ({"--param": "epochs=7"}, (), "parameters {'epochs': 5} -> {'epochs': 7}"),
        ({"--max-concurrency": "2"}, (), "max concurrency 1 -> 2"),
        ({}, ("--catchup",), "no catch-up True -> False"),
    ],
)
def test_schedule_with_a_changed_setting_replaces_the_recurring_run_of_that_name(
    cli: Cli, fake: FakeKfpApi, overrides: dict[str, str], flags: tuple[str, ...], expected: str
) -> None:
    cli(*nightly({}))
    (old_id,) = fake.recurring_runs

    code, out, _ = cli(*nightly(overrides, *flags))

    assert code == 0 and "'nightly' replaced" in out and expected in out
    assert [r.path for r in fake.calls("DELETE", f"{API}/recurringruns/.*")] == [f"{API}/recurringruns/{old_id}"]
    (remaining,) = fake.recurring_runs.values()
    assert remaining["display_name"] == "nightly" and remaining["recurring_run_id"] != old_id


def test_schedule_rejects_a_five_field_cron_with_the_equivalent_before_contacting_the_endpoint(
    cli: Cli, fake: FakeKfpApi
) -> None:
    code, _, err = cli("schedule", "--name", "nightly", "--cron", "0 2 * * *", "--version-name", "v1")

    assert_one_line_error(code, err, "'0 0 2 * * *'", "--convert-cron")
    assert fake.requests == []


def test_schedule_converts_a_five_field_cron_when_asked(cli: Cli, fake: FakeKfpApi) -> None:
    code, out, _ = cli("schedule", "--name", "nightly", "--cron", "0 2 * * *", "--convert-cron", "--version-name", "v1")

    assert code == 0 and "Converted the five-field cron '0 2 * * *' to '0 0 2 * * *'" in out
    (create,) = fake.calls("POST", f"{API}/recurringruns")
    assert create.json()["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"


# --- connection failures: one line on stderr, exit 1 -------------------------------------------------------


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_endpoint_fails_with_one_line(cli: Cli) -> None:
    url = closed_port_url()
    code, _, err = cli("upload", "--host", url, "--namespace", NAMESPACE, "--version-name", "v1", connection=False)

    assert_one_line_error(code, err, f"at {url}: endpoint unreachable", "Connection refused")


def test_a_rejected_token_fails_with_one_line_that_does_not_show_it(cli: Cli, fake: FakeKfpApi, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("wrong-token-value")
    code, _, err = cli("upload", "--host", fake.url, "--namespace", NAMESPACE, "--token-file", str(wrong),
                       "--version-name", "v1", connection=False)

    assert_one_line_error(code, err, "HTTP 401 Unauthorized", "the token was rejected")
    assert "wrong-token-value" not in err


def test_no_token_at_all_is_reported_as_missing(cli: Cli, fake: FakeKfpApi) -> None:
    code, _, err = cli("upload", "--host", fake.url, "--namespace", NAMESPACE, "--version-name", "v1",
                       connection=False)

    assert_one_line_error(code, err, "HTTP 401", f"no token was given (--token-file or ${remote.TOKEN_ENV})")


def test_a_namespace_the_token_may_not_use_fails_with_403(cli: Cli, fake: FakeKfpApi, token_file: Path) -> None:
    code, _, err = cli("upload", "--host", fake.url, "--namespace", "team-b", "--token-file", str(token_file),
                       "--version-name", "v1", connection=False)

    assert_one_line_error(code, err, "HTTP 403 Forbidden", "namespace team-b")


def test_a_login_page_instead_of_the_api_fails_with_one_line(cli: Cli, fake: FakeKfpApi) -> None:
    fake.login_page = True

    code, _, err = cli("upload", "--version-name", "v1")

    assert_one_line_error(code, err, "expected a JSON response from the KFP API", "got text/html")


def test_a_url_that_is_not_the_pipelines_api_fails_with_a_hint(cli: Cli, fake: FakeKfpApi, token_file: Path) -> None:
    code, _, err = cli("upload", "--host", f"{fake.url}/dashboard", "--namespace", NAMESPACE,
                       "--token-file", str(token_file), "--version-name", "v1", connection=False)

    assert_one_line_error(code, err, "HTTP 404", "is the URL the pipelines API? In a Kubeflow platform it ends in")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--namespace", NAMESPACE], "expected the KFP endpoint in --host or $KF_PIPELINES_ENDPOINT"),
        (["--host", "kubeflow.example.com", "--namespace", NAMESPACE], "expected the KFP endpoint as an http"),
        (["--host", "http://127.0.0.1:9"], "expected an explicit Kubeflow namespace"),
        (["--host", "http://127.0.0.1:9", "--namespace", NAMESPACE, "--token-file", "/nonexistent/token"],
         "expected a readable token file at /nonexistent/token"),
    ],
)
def test_missing_or_malformed_connection_settings_fail_before_any_request(
    cli: Cli, fake: FakeKfpApi, argv: list[str], message: str
) -> None:
    code, _, err = cli("upload", *argv, "--version-name", "v1", connection=False)

    assert_one_line_error(code, err, message)
    assert fake.requests == []


def test_the_client_takes_the_namespace_as_given_and_does_not_probe_healthz(fake: FakeKfpApi) -> None:
    # kfp.Client retries /healthz 5 times with 5 s sleeps in its constructor when it has no namespace of its own.
    with pytest.raises(remote.RemoteError, match="HTTP 401"):
        remote.connect(fake.url, "kubeflow", "wrong")

    assert [(r.method, r.path, r.query.get("namespace")) for r in fake.requests] == [
        ("GET", f"{API}/experiments", "kubeflow"),
    ]
