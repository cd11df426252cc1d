"""Connection settings and version naming: endpoint, token, package metadata, git-derived version names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.remote import (
    ENDPOINT_ENV,
    TOKEN_ENV,
    RemoteError,
    git_version_name,
    read_package,
    read_token,
    resolve_endpoint,
)

PACKAGE_SHA = "f00dfeed" + "0" * 56


def test_the_endpoint_comes_from_host_before_the_environment() -> None:
    environ = {ENDPOINT_ENV: "https://from-env.example.com/pipeline"}
    given = "https://kubeflow.example.com/pipeline/"
    assert resolve_endpoint(given, environ) == "https://kubeflow.example.com/pipeline"
    assert resolve_endpoint(None, environ) == "https://from-env.example.com/pipeline"


@pytest.mark.parametrize("value", ["kubeflow.example.com", "ftp://kubeflow.example.com", "https://"])
def test_an_endpoint_must_be_an_http_url(value: str) -> None:
    with pytest.raises(RemoteError, match=f"expected the KFP endpoint as an http:// or https:// URL, got '{value}'"):
        resolve_endpoint(value, {})


def test_the_token_file_wins_over_the_environment_and_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("Bearer abc.def.ghi\n")
    assert read_token(path, {TOKEN_ENV: "from-env"}) == "abc.def.ghi"
    assert read_token(None, {TOKEN_ENV: " from-env\n"}) == "from-env"
    assert read_token(None, {}) is None


def test_an_empty_token_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n")
    with pytest.raises(RemoteError, match="expected a bearer token in the token file .*, found an empty file"):
        read_token(path, {})


def test_a_token_with_whitespace_inside_is_rejected_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-secret\nsecond-secret\n")
    with pytest.raises(RemoteError) as error:
        read_token(path, {})
    assert "found whitespace inside it" in str(error.value) and "secret" not in str(error.value)


def test_read_package_takes_name_and_description_from_pipeline_info(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("pipelineInfo:\n  name: classifier\n  description: Trains it.\nroot: {}\n---\nplatforms: {}\n")
    info = read_package(path)
    assert (info.pipeline_name, info.description, len(info.sha256)) == ("classifier", "Trains it.", 64)


@pytest.mark.parametrize("text", ["just: yaml\n", "- a list\n", "pipelineInfo: [unclosed\n"])
def test_read_package_rejects_what_is_not_a_pipeline_package(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(RemoteError, match=f"expected a KFP pipeline package .* at {path}"):
        read_package(path)


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    result = subprocess.run(["git", "-C", str(repo), *identity, *args], check=True, capture_output=True, text=True)
    return result.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    (tmp_path / "tracked.txt").write_text("one\n")
    git(tmp_path, "add", "tracked.txt")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_a_clean_checkout_names_the_version_after_the_commit(repo: Path) -> None:
    assert git_version_name(repo, PACKAGE_SHA) == git(repo, "rev-parse", "HEAD")[:12]


def test_untracked_files_such_as_the_compiled_package_do_not_make_the_tree_dirty(repo: Path) -> None:
    (repo / "pipeline.yaml").write_text("compiled\n")
    assert git_version_name(repo, PACKAGE_SHA) == git(repo, "rev-parse", "HEAD")[:12]


def test_a_modified_checkout_adds_dirty_and_the_package_hash(repo: Path) -> None:
    (repo / "tracked.txt").write_text("two\n")
    commit = git(repo, "rev-parse", "HEAD")[:12]
    assert git_version_name(repo, PACKAGE_SHA) == f"{commit}-dirty-f00dfeed"
    assert git_version_name(repo, "0badc0de" + "0" * 56) == f"{commit}-dirty-0badc0de"


def test_outside_a_git_checkout_the_error_points_to_version_name(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match=f"expected a git checkout at {tmp_path}.*pass --version-name instead"):
        git_version_name(tmp_path, PACKAGE_SHA)
