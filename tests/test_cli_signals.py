"""``pipelines run --local`` stopped by SIGINT or SIGTERM stops every process it started (steps, training
ranks) before it exits, with one line instead of a traceback; the local model server gets only the
environment it needs (never the Kubeflow token)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.deploy.local import _kill, read_state, server_environment, start, stop
from tests.conftest import free_port

GUARD_S = 600  # a guard against a hung run, not a performance expectation


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, start time, command line) of every live process (zombies left out)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), fields[19], cmdline)
    return table


def descendants(pid: int) -> dict[int, tuple[str, str]]:
    """Every live descendant of ``pid``: pid → (start time, command line)."""
    table, found, frontier = process_table(), {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started, cmdline) in table.items():
            if ppid == parent and child not in found:
                found[child] = (started, cmdline)
                frontier.append(child)
    return found


def wait_for_training_ranks(cli: subprocess.Popen) -> dict[int, tuple[str, str]]:
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline and cli.poll() is None:
        tree = descendants(cli.pid)
        if sum("-m components.training" in cmd for _, cmd in tree.values()) >= 2:
            return tree
        time.sleep(0.2)
    raise AssertionError(f"the training ranks never started (CLI exit code {cli.poll()})")


def still_running(tree: dict[int, tuple[str, str]]) -> dict[int, str]:
    """The processes of ``tree`` that still run (the same pid with the same start time)."""
    table = process_table()
    return {pid: cmd for pid, (started, cmd) in tree.items() if pid in table and table[pid][1] == started}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_the_cli_stops_its_steps_and_training_ranks_and_says_so_in_one_line(tmp_path: Path, sig: int) -> None:
    cli = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "run", "--local", "--workdir", str(tmp_path), "--param", "epochs=200",
         "--param", f"serving_port={free_port()}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree: dict[int, tuple[str, str]] = {}
    try:
        tree = wait_for_training_ranks(cli)
        cli.send_signal(sig)
        _, err = cli.communicate(timeout=GUARD_S)
        survivors = still_running(tree)
    finally:
        if cli.poll() is None:
            cli.kill()
        for pid in still_running(tree):  # a failing run must not leave training ranks on the shared machine
            os.kill(pid, signal.SIGKILL)
        stop(tmp_path / "serving")
    assert survivors == {}
    assert cli.returncode == 128 + sig
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"interrupted by {signal.Signals(sig).name}: stopped")


@pytest.mark.slow
def test_a_cli_killed_with_sigkill_still_leaves_no_step_or_rank_running(tmp_path: Path) -> None:
    cli = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "run", "--local", "--workdir", str(tmp_path), "--param", "epochs=100000",
         "--param", f"serving_port={free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree: dict[int, tuple[str, str]] = {}
    try:
        tree = wait_for_training_ranks(cli)
        cli.kill()
        cli.wait()
        deadline = time.monotonic() + GUARD_S  # the run's child stops the rest: wait for it, bounded by the guard
        while still_running(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = still_running(tree)
    finally:
        for pid in still_running(tree):
            os.kill(pid, signal.SIGKILL)
        stop(tmp_path / "serving")
    assert survivors == {}


def test_the_server_environment_keeps_what_serving_needs_and_drops_the_kubeflow_token() -> None:
    env = server_environment({"PATH": "/bin", "HOME": "/home/u", "AZURE_STORAGE_CONNECTION_STRING": "conn",
                              "AZURE_CLIENT_ID": "id", "KF_PIPELINES_TOKEN": "secret", "AWS_SECRET_ACCESS_KEY": "k",
                              "GITHUB_TOKEN": "t"})
    assert env == {"PATH": "/bin", "HOME": "/home/u", "AZURE_STORAGE_CONNECTION_STRING": "conn", "AZURE_CLIENT_ID": "id"}


def test_the_local_model_server_does_not_inherit_the_kubeflow_token(version_folder: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "do-not-leak")
    endpoint = start(str(version_folder), "digits", free_port(), tmp_path / "serving")
    try:
        environ = Path(f"/proc/{endpoint.pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith(b"KF_PIPELINES_TOKEN=")]
        assert any(v.startswith(b"PATH=") for v in environ)
        assert read_state(tmp_path / "serving").pid == endpoint.pid
    finally:
        stop(tmp_path / "serving")
    assert os.environ["KF_PIPELINES_TOKEN"] == "do-not-leak"  # only the child's environment was trimmed


def test_stopping_a_process_group_this_process_leads_collects_its_leader() -> None:
    """A server started and stopped by the same process (a local deploy that replaces its own server): the
    stopped leader is collected, not left a zombie that keeps its group alive until the grace period ends."""
    leader = subprocess.Popen(["sleep", "600"], start_new_session=True)
    _kill(leader.pid, grace_s=5)
    with pytest.raises(ChildProcessError):  # nothing left to collect: _kill did
        os.waitpid(leader.pid, os.WNOHANG)
    with pytest.raises(ProcessLookupError):
        os.killpg(leader.pid, 0)
