"""Schemathesis against the server's own OpenAPI description (``/openapi.json``, which KServe's FastAPI app
serves): no request it generates, valid or not, may get a 5xx.

Runs the schemathesis CLI against the shared test server: every phase (examples, coverage, fuzzing, stateful) once
over every operation, with up to MAX_EXAMPLES generated cases per operation in the fuzzing phase (about 1,300 requests
in all). No --max-time: with one, fuzzing and stateful testing repeat until it is spent, the same operations again.
Slow (about 15 s); skipped where schemathesis is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SERVED_MODEL

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
MAX_EXAMPLES = 100  # schemathesis's default, stated: the run's size is a number of cases, not of seconds
GUARD_S = 600  # a guard against a hung run, not a performance expectation

pytestmark = [pytest.mark.slow, pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed")]


def test_no_request_schemathesis_generates_gets_a_server_error(predictor, tmp_path):
    config = tmp_path / "schemathesis.toml"
    # The real model name in path parameters, so generated requests reach the model, not only the 404 for unknown names.
    config.write_text(f'[parameters]\n"path.model_name" = "{SERVED_MODEL}"\n')
    command = [SCHEMATHESIS, "--config-file", str(config), "run", f"{predictor}/openapi.json", "--checks", "not_a_server_error",
               "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--request-timeout", "20"]
    # cwd: schemathesis keeps a .schemathesis/ cache in its working directory; not in the repository.
    run = subprocess.run(command, capture_output=True, text=True, timeout=GUARD_S, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
