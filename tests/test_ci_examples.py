"""The CI examples are not run here, but their release order is checked: test → build the image → smoke-test it
→ push it by digest → compile with that digest → upload → submit --wait (→ schedule on main), each stage gated
by the one before; and every `python -m pipelines` command they call must exist and parse."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.remote_cli import add_remote_commands

ROOT = Path(__file__).resolve().parents[1]
GITHUB, AZURE = ROOT / ".github/workflows/pipeline.yml", ROOT / "ci-examples/azure-pipelines.yml"
EXAMPLES = [GITHUB, AZURE]
LEAD_COMMANDS = {"compile", "run", "render", "registry"}  # registered by pipelines/cli.py, not by remote_cli
INVOCATION = re.compile(r"python -m pipelines\s+(?P<rest>[^\n]*)")
# What each stage of the release runs, in the order it must run.
RELEASE = ["test", "image", "image-test", "push", "compile", "upload", "submit", "schedule"]
STAGE_COMMAND = re.compile(r"(?P<test>\.ci/run)\b|\bmake (?P<make>image-test|image|push)\b|python -m pipelines (?P<pipelines>\w+)")
UNGATED = re.compile(r"always\(\)|failure\(\)|failed\(\)|cancelled\(\)|canceled\(\)|succeededOrFailed\(\)")


def strings(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML document (run:, script:, inlineScript: …)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def invocations(path: Path) -> list[list[str]]:
    """argv (after `python -m pipelines`) of each invocation in the file, continuation lines joined."""
    found = []
    for text in strings(yaml.safe_load(path.read_text())):
        joined = re.sub(r"\\\n\s*", " ", text)
        found += [shlex.split(match["rest"]) for match in INVOCATION.finditer(joined)]
    return found


@dataclass(frozen=True)
class Step:
    name: str | None  # the id (GitHub) or name (Azure) other steps refer to
    text: str  # the shell it runs (run, script or inlineScript), or the action/task it uses
    guard: str  # its condition (if / condition), "" when none
    continues_on_error: bool


@dataclass(frozen=True)
class Stage:
    """A GitHub job, or an Azure stage (each holds one job here), with what gates it."""

    name: str
    needs: list[str]
    guard: str
    steps: list[Step]
    raw: dict[str, Any]


def github_stages(workflow: dict[str, Any]) -> list[Stage]:
    stages = []
    for name, job in workflow["jobs"].items():
        needs = job.get("needs", [])
        steps = [Step(s.get("id"), s.get("run") or s.get("uses", ""), str(s.get("if", "")), bool(s.get("continue-on-error")))
                 for s in job["steps"]]
        stages.append(Stage(name, [needs] if isinstance(needs, str) else needs, str(job.get("if", "")), steps, job))
    return stages


def azure_stages(pipeline: dict[str, Any]) -> list[Stage]:
    stages = []
    for stage in pipeline["stages"]:
        (job,) = stage["jobs"]
        steps = [Step(s.get("name"), s.get("script") or s.get("inputs", {}).get("inlineScript") or s.get("task", s.get("checkout", "")),
                      str(s.get("condition", "")), bool(s.get("continueOnError"))) for s in job["steps"]]
        needs = stage.get("dependsOn", [])
        stages.append(Stage(stage["stage"], [needs] if isinstance(needs, str) else needs, str(stage.get("condition", "")), steps, stage))
    return stages


def stages_of(path: Path) -> list[Stage]:
    document = yaml.safe_load(path.read_text())
    return github_stages(document) if path == GITHUB else azure_stages(document)


def release_order(stages: list[Stage]) -> list[tuple[str, str]]:
    """(stage name, release step) of every release command, in the order the file runs them."""
    found = []
    for stage in stages:
        for step in stage.steps:
            for match in STAGE_COMMAND.finditer(step.text):
                found.append((stage.name, match["make"] or match["pipelines"] or "test"))
    return found


def stage_running(stages: list[Stage], command: str) -> Stage:
    return next(s for s in stages if any(re.search(rf"\b{re.escape(command)}\b", step.text) for step in s.steps))


def step_running(stage: Stage, command: str) -> Step:
    return next(step for step in stage.steps if command in step.text)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_release_runs_test_build_image_test_push_compile_upload_submit_in_that_order(path: Path) -> None:
    assert [step for _, step in release_order(stages_of(path))] == RELEASE


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_stage_starts_only_when_the_one_before_succeeded(path: Path) -> None:
    stages = stages_of(path)
    order = [stage for stage, _ in release_order(stages)]
    chain = list(dict.fromkeys(order))  # the stages in release order: test, then image (build, test, push), then train

    assert len(chain) == 3, f"expected test, image and pipeline stages, found {chain}"
    for before, after in zip(chain, chain[1:]):
        stage = next(s for s in stages if s.name == after)
        assert stage.needs == [before], f"{after} must wait for {before}, it waits for {stage.needs}"
    for stage in stages:
        assert stage.guard in ("", "succeeded()"), f"{stage.name} runs under {stage.guard!r}, not only after success"
        for step in stage.steps:
            assert not step.continues_on_error and not UNGATED.search(step.guard), f"{stage.name}: {step.text[:60]!r} is not gated"
    # Inside the image stage the build, the image test and the push run in that order in one job: a failure
    # stops the job before the push (the steps are not separate jobs that could run on their own).
    image = stage_running(stages, "make push")
    assert [step for stage, step in release_order(stages) if stage == image.name] == ["image", "image-test", "push"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_build_image_test_and_push_name_the_same_image_the_commit_tags(path: Path) -> None:
    image = stage_running(stages_of(path), "make push")
    tags = [re.search(r"IMAGE_TAG=(\$\{\{[^}]*\}\}|\S+)", step.text)[1] for step in image.steps
            if re.search(r"\bmake (image|image-test|push)\b", step.text)]

    assert len(tags) == 3 and len(set(tags)) == 1 and tags[0] in ("${{ github.sha }}", "$(Build.SourceVersion)"), tags


def pushed_reference(step: Step) -> tuple[str, str]:
    """(the file `make push` writes the digest reference to, the output variable it publishes it as)."""
    written = re.search(r"DIGEST_FILE=\"?([^\"\s]+)", step.text)
    assert written, f"`make push` is not told where to write the digest reference (DIGEST_FILE=…): {step.text!r}"
    digest_file = written[1]
    published = re.search(r"(\w+)=\$\(cat \"?" + re.escape(digest_file) + r"\"?\)\" >> \"\$GITHUB_OUTPUT\"", step.text) or \
        re.search(r"task\.setvariable variable=(\w+);isOutput=true\]\$\(cat \"?" + re.escape(digest_file), step.text)
    assert published, f"the push step does not publish the reference it wrote to {digest_file}"
    return digest_file, published[1]


def test_github_compiles_and_submits_with_the_digest_the_image_job_pushed() -> None:
    stages = stages_of(GITHUB)
    image, train = stage_running(stages, "make push"), stage_running(stages, "python -m pipelines compile")
    push = step_running(image, "make push")
    _, output = pushed_reference(push)

    assert image.raw["outputs"] == {"ref": f"${{{{ steps.{push.name}.outputs.{output} }}}}"}
    assert train.raw["env"]["PIPELINE_IMAGE"] == f"${{{{ needs.{image.name}.outputs.ref }}}}"
    assert all("PIPELINE_IMAGE" not in s.get("env", {}) for s in train.raw["steps"]), "a step overrides the pushed digest"
    assert stage_running(stages, "python -m pipelines submit") is train


def test_azure_compiles_and_submits_with_the_digest_the_image_stage_pushed() -> None:
    stages = stages_of(AZURE)
    image, train = stage_running(stages, "make push"), stage_running(stages, "python -m pipelines compile")
    push = step_running(image, "make push")
    _, output = pushed_reference(push)
    (job,) = image.raw["jobs"]

    assert train.raw["variables"]["PIPELINE_IMAGE"] == f"$[ stageDependencies.{image.name}.{job['job']}.outputs['{push.name}.{output}'] ]"
    assert stage_running(stages, "python -m pipelines submit") is train


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_pipeline_stage_refuses_an_image_reference_without_a_digest(path: Path) -> None:
    compile_step = step_running(stage_running(stages_of(path), "python -m pipelines compile"), "python -m pipelines compile")
    guard = compile_step.text.partition("python -m pipelines compile")[0]

    assert 'case "$PIPELINE_IMAGE" in *@sha256:*) ;;' in guard and "exit 1" in guard


def test_the_acr_push_authenticates_with_oidc_and_stores_no_secret() -> None:
    github, azure = yaml.safe_load(GITHUB.read_text()), yaml.safe_load(AZURE.read_text())
    image = stage_running(github_stages(github), "make push")
    login = [s for s in image.raw["steps"] if s.get("uses", "").startswith("azure/login@")]
    push = next(s for s in stage_running(azure_stages(azure), "make push").raw["jobs"][0]["steps"] if "make push" in str(s))

    assert [sorted(step["with"]) for step in login] == [["client-id", "subscription-id", "tenant-id"]]
    assert "az acr login" in step_running(image, "make push").text
    assert push["task"] == "AzureCLI@2" and "az acr login" in push["inputs"]["inlineScript"]
    for text in (GITHUB.read_text(), AZURE.read_text()):
        assert not re.search(r"client-secret|password|creds:", text, re.IGNORECASE)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_compiles_uploads_submits_with_wait_and_schedules(path: Path) -> None:
    commands = [argv[0] for argv in invocations(path)]
    assert commands == ["compile", "upload", "submit", "schedule"]


def parser() -> tuple[argparse.ArgumentParser, set[str]]:
    """The remote commands plus a stand-in `compile` with its DESIGN.md contract; and the registered names."""
    main = argparse.ArgumentParser(prog="pipelines", exit_on_error=False)
    subparsers = main.add_subparsers(dest="command", required=True)
    add_remote_commands(subparsers, lambda pipeline: {}, lambda pipeline, path: None)
    subparsers.add_parser("compile").add_argument("--output", required=True)
    return main, set(subparsers.choices)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_command_the_example_calls_is_registered_and_its_options_parse(path: Path) -> None:
    main, names = parser()
    registered = names | LEAD_COMMANDS
    for argv in invocations(path):
        assert argv[0] in registered, f"{path.name} calls unknown command {argv[0]!r}"
        if argv[0] in {"upload", "submit", "schedule", "compile"}:
            try:
                main.parse_args(argv)
            except (argparse.ArgumentError, SystemExit) as error:
                pytest.fail(f"{path.name}: `python -m pipelines {shlex.join(argv)}` does not parse: {error}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_waits_names_the_namespace_and_passes_the_token_as_a_file(path: Path) -> None:
    for argv in invocations(path):
        if argv[0] == "compile":
            continue
        args = parser()[0].parse_args(argv)
        assert args.namespace and args.token_file is not None and getattr(args, "param", []) == []
        if argv[0] == "submit":
            assert args.wait and args.timeout == 7200
        if argv[0] == "schedule":
            assert args.cron == "0 0 2 * * *" and not args.convert_cron


def test_the_github_workflow_may_request_an_oidc_token() -> None:
    workflow = yaml.safe_load(GITHUB.read_text())
    assert workflow["permissions"]["id-token"] == "write"
    login = [s for s in workflow["jobs"]["train"]["steps"] if s.get("uses", "").startswith("azure/login@")]
    assert [sorted(step["with"]) for step in login] == [["client-id", "subscription-id", "tenant-id"]]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_only_main_updates_the_nightly_schedule(path: Path) -> None:
    stages = stages_of(path)
    step = step_running(stage_running(stages, "python -m pipelines schedule"), "python -m pipelines schedule")
    guard = step.guard or step.text.split("python -m pipelines schedule")[0].rsplit("if ", 1)[-1]

    assert "refs/heads/main" in guard
