"""``make clean`` asks before it deletes a model registry (and refuses where nobody can answer); ``make stop``
stops the servers this checkout started under any work dir, and only those.

The targets run as a person runs them, ``make -f <checkout>/Makefile …`` with this ``.venv``, from a scratch
folder (so ``build/`` is the scratch folder's, not the checkout's).
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from components.deploy.local import read_state, running_servers, start, stop
from components.registry import Registry
from components.store import open_store
from tests.conftest import free_ports
from tests.test_registry import model_folder, push_metadata

CHECKOUT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # this interpreter's virtual environment
GUARD_S = 300  # a guard against a hung command, not a performance expectation


def make(target: str, cwd: Path, *variables: str, stdin: int | None = subprocess.DEVNULL, checkout: Path = CHECKOUT,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "CI"} | (env or {})
    return subprocess.run(["make", "--no-print-directory", "-f", str(checkout / "Makefile"), target, f"VENV={VENV}", *variables],
                          cwd=cwd, stdin=stdin, capture_output=True, text=True, timeout=GUARD_S, env=environ)


def make_on_a_terminal(target: str, cwd: Path, answer: bytes, *variables: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``make`` with a terminal as its input, on which ``answer`` is typed."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)  # the terminal keeps the line until the question reads it
        return make(target, cwd, *variables, stdin=terminal, env=env)
    finally:
        os.close(terminal)
        os.close(controller)


@pytest.fixture
def workdir_with_registry(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    Registry(open_store(str(work / "store")), "digits").push(model_folder(tmp_path / "src", "one"), push_metadata("one"))
    (work / "kfp-root").mkdir()
    return work


def test_clean_without_a_terminal_refuses_to_delete_a_registry(workdir_with_registry: Path, tmp_path: Path) -> None:
    result = make("clean", tmp_path, f"WORKDIR={workdir_with_registry}")
    assert result.returncode != 0
    assert f"error: {workdir_with_registry}/store holds a model registry (versions: 1)" in result.stderr
    assert "make clean FORCE=1" in result.stderr
    assert (workdir_with_registry / "store" / "models" / "digits").is_dir()


def test_clean_under_ci_refuses_even_on_a_terminal(workdir_with_registry: Path, tmp_path: Path) -> None:
    result = make_on_a_terminal("clean", tmp_path, b"y\n", f"WORKDIR={workdir_with_registry}", env={"CI": "true"})
    assert result.returncode != 0 and "no terminal to ask on" in result.stderr
    assert (workdir_with_registry / "store" / "models" / "digits").is_dir()


def test_clean_asks_and_keeps_the_registry_unless_the_answer_is_yes(workdir_with_registry: Path, tmp_path: Path) -> None:
    kept = make_on_a_terminal("clean", tmp_path, b"n\n", f"WORKDIR={workdir_with_registry}")
    assert kept.returncode == 0 and "nothing deleted" in kept.stdout
    assert (workdir_with_registry / "store" / "models" / "digits").is_dir()
    deleted = make_on_a_terminal("clean", tmp_path, b"y\n", f"WORKDIR={workdir_with_registry}")
    assert deleted.returncode == 0, deleted.stderr
    assert not workdir_with_registry.exists()


def test_clean_force_deletes_without_asking(workdir_with_registry: Path, tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    result = make("clean", tmp_path, f"WORKDIR={workdir_with_registry}", "FORCE=1")
    assert result.returncode == 0, result.stderr
    assert not workdir_with_registry.exists() and not (tmp_path / "build").exists()


def test_clean_of_run_outputs_without_a_registry_does_not_ask(tmp_path: Path) -> None:
    (tmp_path / "work" / "kfp-root").mkdir(parents=True)
    result = make("clean", tmp_path, f"WORKDIR={tmp_path / 'work'}")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "work").exists()


def copy_of_checkout(target: Path) -> Path:
    """Another checkout of this project (its code and Makefile), so its servers are not this checkout's."""
    for name in ("components", "pipelines", "serving"):
        shutil.copytree(CHECKOUT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CHECKOUT / "Makefile", target / "Makefile")
    return target


def test_stop_finds_the_servers_its_checkout_started_under_any_work_dir_and_only_those(version_folder: Path, tmp_path: Path) -> None:
    other = copy_of_checkout(tmp_path / "checkout")
    state_dirs = [tmp_path / "a-workdir" / "serving", tmp_path / "b-workdir" / "serving"]
    starter = ("import sys; from pathlib import Path; from components.deploy.local import start; "
               "start(sys.argv[1], 'digits', int(sys.argv[2]), Path(sys.argv[3]))")
    mine = tmp_path / "mine" / "serving"  # a server of this checkout: the other checkout's `make stop` leaves it
    try:
        my_port, *ports = free_ports(1 + len(state_dirs))
        with ThreadPoolExecutor(len(state_dirs)) as pool:  # the three servers start side by side
            # Started from the other checkout (python -c runs the code of its folder).
            others = [pool.submit(subprocess.run, [sys.executable, "-c", starter, str(version_folder), str(port), str(state_dir)],
                                  cwd=other, check=True, timeout=GUARD_S) for port, state_dir in zip(ports, state_dirs)]
            start(str(version_folder), "digits", my_port, mine)
            for started in others:
                started.result()  # a starter that failed raises here
        pids = [read_state(d).pid for d in state_dirs]
        assert sorted(p for p, _ in running_servers(other)) == sorted(pids)
        result = make("stop", other, checkout=other)
        assert result.returncode == 0, result.stderr
        assert running_servers(other) == []
        assert all(read_state(d) is None for d in state_dirs)  # their state files are gone too
        assert all(f"pid {pid}" in result.stdout for pid in pids)
        assert read_state(mine) is not None and [p for p, _ in running_servers(CHECKOUT) if p == read_state(mine).pid]
    finally:
        for state_dir in [*state_dirs, mine]:
            stop(state_dir)
