"""The project image (manifests/docker/Dockerfile), checked without a container engine: what it installs,
what it runs as, what it is based on, and that the entry points the manifests and KFP call exist."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from components.deploy.inferenceservice import RUN_AS_USER

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "manifests" / "docker" / "Dockerfile"
# Module -> the file that makes ``python -m MODULE`` work.
ENTRY_POINTS = {
    "serving": "serving/__main__.py",  # the predictor (InferenceService)
    "components.training": "components/training/__main__.py",  # the PyTorchJob replicas
    "pipelines": "pipelines/__main__.py",  # compile / run / render
}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


STEPS = instructions(DOCKERFILE.read_text())


def args_of(keyword: str) -> list[str]:
    return [rest for kw, rest in STEPS if kw == keyword]


def pip_installs() -> list[list[str]]:
    found = []
    for command in args_of("RUN"):
        for part in command.split("&&"):
            words = shlex.split(part)
            if words[:2] == ["pip", "install"]:
                found.append(words[2:])
    return found


def test_the_base_image_is_an_exact_python_release_or_a_digest() -> None:
    (base,) = args_of("FROM")
    defaults = dict(a.split("=", 1) for a in args_of("ARG") if "=" in a)
    image = defaults.get(base.strip("${}"), base)

    assert "@sha256:" in image or re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image


def test_the_base_python_fits_the_projects_requires_python() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    defaults = dict(a.split("=", 1) for a in args_of("ARG") if "=" in a)

    assert requires == ">=3.11,<3.13" and defaults["PYTHON_IMAGE"].startswith("python:3.11.")


def test_dependencies_come_from_the_lock_only_and_the_project_adds_none() -> None:
    installs = pip_installs()

    assert installs == [["--no-cache-dir", "-r", "requirements.lock"], ["--no-cache-dir", "--no-deps", "."]]
    assert "requirements.lock ./" in args_of("COPY")


def read_lock(name: str) -> dict[str, str]:
    return {normalize(n): v for n, v in (line.split("==") for line in (ROOT / name).read_text().split())}


def test_the_locks_pin_every_direct_dependency_at_the_pyproject_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, test = read_lock("requirements.lock"), read_lock("requirements-test.lock")

    for lock_name, lock, requirements in (("requirements.lock", runtime, project["dependencies"]),
                                          ("requirements-test.lock", test, project["optional-dependencies"]["test"])):
        for requirement in requirements:
            name, version = requirement.split("==")
            assert lock.get(normalize(name)) == version, f"{requirement} is not pinned the same in {lock_name}"


def test_the_image_lock_holds_no_test_tool_and_the_test_lock_repeats_no_runtime_pin() -> None:
    runtime, test = read_lock("requirements.lock"), read_lock("requirements-test.lock")

    assert not set(runtime) & set(test), f"pinned in both locks: {sorted(set(runtime) & set(test))}"
    assert not {"pytest", "hypothesis", "schemathesis", "ruff", "jsonschema"} & set(runtime)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_a_proxy_ca_reaches_pip_only_as_a_build_secret_never_a_layer() -> None:
    pip_runs = [run for run in args_of("RUN") if "pip install" in run]

    assert pip_runs and all(run.startswith("--mount=type=secret,id=pip-ca ") for run in pip_runs)
    assert "PIP_CERT" not in " ".join(args_of("ENV")) and not any(".crt" in c or ".pem" in c for c in args_of("COPY") + args_of("ADD"))


def test_the_image_keeps_no_pip_cache_build_folder_or_wheel() -> None:
    (final,) = [run for run in args_of("RUN") if "--no-deps ." in run]

    assert "PIP_NO_CACHE_DIR=1" in " ".join(args_of("ENV"))
    assert "pip uninstall --yes wheel" in final and "rm -rf /build /root/.cache" in final


def test_the_fallback_base_puts_its_python_first_on_path_as_the_official_image_does() -> None:
    fallback = instructions((ROOT / "manifests/docker/debian-python.Dockerfile").read_text())
    env = " ".join(rest for kw, rest in fallback if kw == "ENV")
    runs = " ".join(rest for kw, rest in fallback if kw == "RUN")

    assert [rest for kw, rest in fallback if kw == "FROM"] == ["scratch"]
    assert "python3 -m venv /opt/python" in runs and "PATH=/opt/python/bin:" in env


def test_the_image_runs_as_the_non_root_user_the_manifests_expect() -> None:
    users = args_of("USER")

    assert users and users[-1].split(":")[0] == str(RUN_AS_USER) != "0"
    assert any(f"--uid {RUN_AS_USER}" in run for run in args_of("RUN"))


def test_there_is_no_entrypoint_so_kfp_and_the_manifests_choose_the_command() -> None:
    assert args_of("ENTRYPOINT") == []


def test_the_build_context_leaves_out_git_tests_and_local_environments() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())

    assert {".git", "tests", ".venv", ".work", "**/__pycache__", ".github", "ci-examples"} <= ignored


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_the_entry_points_the_image_relies_on_exist(module: str, request: pytest.FixtureRequest) -> None:
    path = ROOT / ENTRY_POINTS[module]
    if not path.is_file():
        reason = f"python -m {module} needs {ENTRY_POINTS[module]}, not in this checkout yet"
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    package = module.split(".")[0]

    assert path.is_file()
    assert f"./{package}" in " ".join(args_of("COPY"))  # and the image copies its package
