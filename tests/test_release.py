"""The release path (README, "Release"): `make image`, `make image-test` and `make push` call the scripts in .ci/,
none of them runs in `make test`, the engine and base are chosen as documented, and a package compiled with a
pushed digest runs that digest everywhere.

The tests that need the built image (its smoke test, a push and pull by digest through a registry on loopback)
run only when RELEASE_IMAGE names it (they take minutes and push several GB); everything else is fast."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "0" * 64
RELEASE_IMAGE = os.environ.get("RELEASE_IMAGE", "")
OCI_MANIFESTS = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def make_dry_run(*arguments: str) -> str:
    # --no-print-directory: under `make test` (CI) this make is a sub-make, which would add "Entering directory" lines.
    result = subprocess.run(["make", "--dry-run", "--always-make", "--no-print-directory", *arguments], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return result.stdout


def test_make_test_builds_no_image() -> None:
    commands = make_dry_run("test")

    assert "pytest" in commands
    assert not re.search(r"image-build|image-test|image-push|buildah|docker", commands), commands


def test_image_image_test_and_push_run_the_release_scripts_on_one_local_build() -> None:
    commands = make_dry_run("image", "image-test", "push", "IMAGE_TAG=abc123", "REGISTRY=127.0.0.1:5000").splitlines()

    assert commands == [".ci/image-build localhost/kfp-ps-classifier:abc123", ".ci/image-test localhost/kfp-ps-classifier:abc123",
                        ".ci/image-push localhost/kfp-ps-classifier:abc123 127.0.0.1:5000/kfp-ps-classifier:abc123"]
    assert make_dry_run("images", "IMAGE_TAG=abc123").splitlines() == commands[:1]  # the old name builds the same


def fake_tool(folder: Path, name: str, exit_code: int) -> None:
    """A stand-in for a container tool: docker's daemon cannot run on this machine, so its answer is faked."""
    path = folder / name
    path.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    path.chmod(0o755)


def engine_with(tmp_path: Path, tools: dict[str, int]) -> subprocess.CompletedProcess[str]:
    for name, exit_code in tools.items():
        fake_tool(tmp_path, name, exit_code)
    script = f". {ROOT / '.ci/image-lib.sh'} && image_engine"
    return subprocess.run(["/bin/bash", "-c", script], env={"PATH": str(tmp_path)}, capture_output=True, text=True)


@pytest.mark.parametrize(("tools", "engine"), [
    ({"docker": 0, "buildah": 0}, "docker"),  # `docker info` answers: its daemon runs
    ({"docker": 1, "buildah": 0}, "buildah"),  # a docker client without a daemon (this machine)
    ({"buildah": 0}, "buildah"),
])
def test_the_engine_is_docker_where_its_daemon_answers_else_buildah(tmp_path: Path, tools: dict[str, int], engine: str) -> None:
    result = engine_with(tmp_path, tools)

    assert (result.returncode, result.stdout.strip()) == (0, engine)


def test_without_docker_or_buildah_the_build_says_what_it_needs(tmp_path: Path) -> None:
    result = engine_with(tmp_path, {"docker": 1})

    assert result.returncode == 1
    assert "expected a working docker (daemon running) or buildah on PATH, found neither" in result.stderr


def test_the_fallback_base_is_the_official_bases_debian_release_with_its_python() -> None:
    dockerfile = (ROOT / "manifests/docker/Dockerfile").read_text()
    official = re.search(r"ARG PYTHON_IMAGE=python:(\d+\.\d+)\.\d+-slim-(\w+)", dockerfile)
    base_script = (ROOT / ".ci/image-base").read_text()
    lib = (ROOT / ".ci/image-lib.sh").read_text()

    assert official and official.groups() == ("3.11", "bookworm")
    assert re.search(rf"debootstrap .*--include=python3,python3-venv\S* {official[2]} ", base_script)
    assert f'FALLBACK_BASE="localhost/kfp-ps-classifier-base:{official[2]}-python{official[1]}"' in lib


def test_a_package_compiled_with_a_pushed_digest_runs_it_in_every_step_and_the_pods_they_create(tmp_path: Path) -> None:
    image = f"kfpps.azurecr.io/kfp-ps-classifier@{DIGEST}"
    package = tmp_path / "pipeline.yaml"
    # A fresh process: the component decorators read PIPELINE_IMAGE when their modules are imported.
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--output", str(package)], cwd=ROOT, check=True,
                   env={**os.environ, "PIPELINE_IMAGE": image}, capture_output=True)
    spec = next(yaml.safe_load_all(package.read_text()))
    containers = [executor["container"] for executor in spec["deploymentSpec"]["executors"].values()]

    assert containers and {c["image"] for c in containers} == {image}
    # The train and deploy steps build the TrainJob and InferenceService from PIPELINE_IMAGE in their pods.
    for container in containers:
        assert {"name": "PIPELINE_IMAGE", "value": image} in container.get("env", []), container["args"]


# --- with the built image (opt-in) --------------------------------------------------------------------------

def engine() -> str:
    """The engine the scripts would use, or a skip that says what is missing."""
    if not RELEASE_IMAGE:
        pytest.skip("the image tests run only with RELEASE_IMAGE=localhost/kfp-ps-classifier:VERSION, after `make image` "
                    "(minutes each; the push sends several GB to a registry on loopback)")
    result = subprocess.run(["/bin/bash", "-c", f". {ROOT / '.ci/image-lib.sh'} && image_engine"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"no container engine on this machine: {result.stderr.strip()}")
    return result.stdout.strip()


@pytest.mark.slow
def test_the_built_image_passes_its_smoke_test() -> None:
    engine()
    result = subprocess.run([str(ROOT / ".ci/image-test"), RELEASE_IMAGE], capture_output=True, text=True, timeout=1800)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(re.findall(r"^ok  ", result.stdout, re.MULTILINE)) == 5, result.stdout


@pytest.fixture
def loopback_registry(tmp_path: Path):
    """Debian's docker-registry (the OCI distribution API) on a free loopback port, storing under tmp_path."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry): no registry to push to")
    port = free_port()
    config = {"version": 0.1, "storage": {"filesystem": {"rootdirectory": str(tmp_path / "blobs")}, "delete": {"enabled": True}},
              "http": {"addr": f"127.0.0.1:{port}"}, "log": {"level": "warn"}}
    (tmp_path / "registry.yml").write_text(json.dumps(config))  # JSON is YAML
    with open(tmp_path / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(tmp_path / "registry.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_registry(f"http://127.0.0.1:{port}", proc, tmp_path / "registry.log")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp_path / "blobs", ignore_errors=True)  # several GB once pushed; absent when nothing was


def wait_for_registry(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/v2/", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.2)
    pytest.fail(f"the registry did not answer on {url}:\n{log.read_text()[-2000:]}")


@pytest.mark.slow
def test_push_prints_the_digest_the_registry_serves_and_the_image_pulls_back_by_it(loopback_registry: str, tmp_path: Path) -> None:
    kind = engine()
    target, digest_file = f"{loopback_registry}/kfp-ps-classifier:release-test", tmp_path / "image-ref"
    pushed = subprocess.run([str(ROOT / ".ci/image-push"), RELEASE_IMAGE, target], capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "DIGEST_FILE": str(digest_file)})
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    reference = pushed.stdout.strip().splitlines()[-1]
    repository, _, digest = reference.partition("@")

    assert repository == f"{loopback_registry}/kfp-ps-classifier" and re.fullmatch(r"sha256:[0-9a-f]{64}", digest), reference
    assert digest_file.read_text().strip() == reference
    manifest = requests.get(f"http://{loopback_registry}/v2/kfp-ps-classifier/manifests/{digest}", headers={"Accept": OCI_MANIFESTS}, timeout=30)
    assert manifest.status_code == 200 and "sha256:" + hashlib.sha256(manifest.content).hexdigest() == digest
    for blob in [manifest.json()["config"], *manifest.json()["layers"]]:
        head = requests.head(f"http://{loopback_registry}/v2/kfp-ps-classifier/blobs/{blob['digest']}", timeout=30)
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == blob["size"]
    assert pull_by_digest(kind, reference, tmp_path) == image_id(kind, RELEASE_IMAGE)


def with_engine_settings(*command: str, timeout_s: float = 120) -> str:
    """``command`` with the scripts' engine settings (buildah's storage driver and isolation); its output."""
    script = f'. {ROOT / ".ci/image-lib.sh"} && "$@"'
    return subprocess.run(["/bin/bash", "-c", script, "engine", *command], check=True, capture_output=True, text=True,
                          timeout=timeout_s).stdout


def pull_by_digest(kind: str, reference: str, tmp_path: Path) -> str:
    """Pull ``reference`` (name@sha256:…) as a fresh cluster node would, every layer from the registry; the
    pulled image's id. buildah pulls into an empty store under ``tmp_path``; docker's pulled name is removed."""
    if kind == "docker":
        with_engine_settings("docker", "pull", reference, timeout_s=1800)
        try:
            return image_id(kind, reference)
        finally:
            with_engine_settings("docker", "rmi", reference)
    store = ["--root", str(tmp_path / "node-storage"), "--runroot", str(tmp_path / "node-run")]
    try:
        with_engine_settings("buildah", *store, "pull", "--tls-verify=false", reference, timeout_s=1800)
        return image_id(kind, reference, *store)
    finally:
        shutil.rmtree(tmp_path / "node-storage")  # several GB; pytest would keep it with the last runs' folders


def image_id(kind: str, reference: str, *store: str) -> str:
    command = ["docker", "image", "inspect", "--format", "{{.Id}}", reference] if kind == "docker" else \
        ["buildah", *store, "inspect", "--type", "image", "--format", "{{.FromImageID}}", reference]
    return with_engine_settings(*command).strip().removeprefix("sha256:")
