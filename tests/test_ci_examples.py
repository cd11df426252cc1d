"""The CI examples are not run here, but every `python -m pipelines` command they call must exist and parse."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.remote_cli import add_remote_commands

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [ROOT / ".github/workflows/pipeline.yml", ROOT / "ci-examples/azure-pipelines.yml"]
LEAD_COMMANDS = {"compile", "run", "render", "registry"}  # registered by pipelines/cli.py, not by remote_cli
INVOCATION = re.compile(r"python -m pipelines\s+(?P<rest>[^\n]*)")


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


def parser() -> tuple[argparse.ArgumentParser, set[str]]:
    """The remote commands plus a stand-in `compile` with its DESIGN.md contract; and the registered names."""
    main = argparse.ArgumentParser(prog="pipelines", exit_on_error=False)
    subparsers = main.add_subparsers(dest="command", required=True)
    add_remote_commands(subparsers, lambda pipeline: {}, lambda pipeline, path: None)
    subparsers.add_parser("compile").add_argument("--output", required=True)
    return main, set(subparsers.choices)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_compiles_uploads_submits_with_wait_and_schedules(path: Path) -> None:
    commands = [argv[0] for argv in invocations(path)]
    assert commands == ["compile", "upload", "submit", "schedule"]


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
    workflow = yaml.safe_load(EXAMPLES[0].read_text())
    assert workflow["permissions"]["id-token"] == "write"
    login = [s for s in workflow["jobs"]["train"]["steps"] if s.get("uses", "").startswith("azure/login@")]
    assert [sorted(step["with"]) for step in login] == [["client-id", "subscription-id", "tenant-id"]]
