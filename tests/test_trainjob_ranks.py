"""The real rank entry point, run as local processes with exactly the environment a TrainJob's pods get.

Each process gets what its pod would: the runtime's container env (the downward-API variables resolved as
the kubelet resolves them from the JobSet's pod labels), the TrainJob's per-job env (``TRAIN_ARGV`` through
``runtimePatches`` for ``ps``, ``trainer.env`` for ``node``), ``JOB_COMPLETION_INDEX`` from the Indexed Job,
and on the ``node`` pods the Torch plugin's ``PET_*`` variables. What a single machine cannot give, and is
overridden here only (said so): the pods' hostnames resolve to 127.0.0.1 (``TRAIN_POD_HOST_OVERRIDE``, which
no manifest sets), the network interface is ``lo`` instead of ``eth0``, and ``MASTER_PORT`` is a free port
(pods each have their own address; this shared machine may have 29500 taken). P = 2 and N = 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.store import join_key
from components.training.config import TrainConfig
from components.training.rank import HOST_OVERRIDE, RankEnv
from components.training.trainjob import RuntimeSettings, TrainJobSettings, build_runtime, build_trainjob
from components.training.worker import HISTORY_FILE
from tests.conftest import free_port

RUN_ID = "ranks-test"
TEST_ONLY = {"TP_SOCKET_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "lo", HOST_OVERRIDE: "127.0.0.1"}


def replicated(runtime: dict[str, Any], name: str) -> dict[str, Any]:
    return next(j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == name)


def resolve(entry: dict[str, Any], labels: dict[str, str]) -> str:
    """An env entry's value, a downward-API label reference resolved from the pod's labels."""
    if "value" in entry:
        return entry["value"]
    path = entry["valueFrom"]["fieldRef"]["fieldPath"]
    return labels[path.removeprefix("metadata.labels['").removesuffix("']")]


def pod_env(runtime: dict[str, Any], job: dict[str, Any], replicated_job: str, index: int) -> dict[str, str]:
    """The environment of pod ``index`` of ``replicated_job`` as the JobSet, the Job controller and the Trainer make it."""
    name = job["metadata"]["name"]  # the JobSet has the TrainJob's name
    labels = {"jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/replicatedjob-name": replicated_job}
    container = replicated(runtime, replicated_job)["template"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: resolve(e, labels) for e in container["env"]}
    env["JOB_COMPLETION_INDEX"] = str(index)  # the Job controller, for Indexed Jobs
    if replicated_job == "ps":
        (patch,) = job["spec"]["runtimePatches"]
        ps = next(j for j in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"] if j["name"] == "ps")
        env.update({e["name"]: e["value"] for e in ps["template"]["spec"]["template"]["spec"]["containers"][0]["env"]})
    else:
        env.update({e["name"]: e["value"] for e in job["spec"]["trainer"]["env"]})
        # The Torch plugin's injection into the trainer (node) container.
        env.update({"PET_NNODES": str(job["spec"]["trainer"]["numNodes"]), "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(index),
                    "PET_MASTER_ADDR": f"{name}-node-0-0.{name}", "PET_MASTER_PORT": "29400"})
    return env


def config(prepared) -> TrainConfig:
    return TrainConfig(store_uri=prepared.store_uri, dataset_prefix=prepared.prefix, output_prefix=f"runs/{RUN_ID}/model",
                       epochs=1, num_ps=2, num_workers=2, rpc_timeout_s=60)


def test_ranks_and_master_come_from_the_jobset_and_trainer_variables(prepared) -> None:
    cfg = config(prepared)
    runtime, job = build_runtime(RuntimeSettings(num_ps=2)), build_trainjob(cfg, RUN_ID, TrainJobSettings("ns"))
    envs = [pod_env(runtime, job, "ps", i) for i in range(2)] + [pod_env(runtime, job, "node", i) for i in range(2)]
    ranks = [RankEnv.from_environ(2, 2, env) for env in envs]
    assert [r.rank for r in ranks] == [0, 1, 2, 3] and {r.world_size for r in ranks} == {4}
    assert {r.master_addr for r in ranks} == {"train-ranks-test-ps-0-0.train-ranks-test"}  # ps pod 0, via the headless service
    assert {r.master_port for r in ranks} == {29500}
    local = RankEnv.from_environ(2, 2, {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"})
    assert local == RankEnv(3, 4, "127.0.0.1", 1)  # the local launcher and PyTorchJob path, unchanged


@pytest.mark.parametrize(("job", "extra", "message"), [
    ("ps", {"JOB_COMPLETION_INDEX": "2"}, r"expected JOB_COMPLETION_INDEX in 0..1 \(num_ps=2\) in the ps job, got 2"),
    ("node", {"PET_NNODES": "3"}, r"expected PET_NNODES=2 \(num_workers\), got 3"),
])
def test_a_pod_whose_variables_disagree_with_the_arguments_refuses_to_start(prepared, job, extra, message) -> None:
    cfg = config(prepared)
    env = pod_env(build_runtime(RuntimeSettings(num_ps=2)), build_trainjob(cfg, RUN_ID, TrainJobSettings("ns")), job, 0)
    with pytest.raises(SystemExit, match=message):
        RankEnv.from_environ(2, 2, {**env, **extra})


@pytest.mark.slow
def test_the_pods_environment_trains_p2_n2_to_completion_as_local_processes(prepared) -> None:
    cfg = config(prepared)
    runtime, job = build_runtime(RuntimeSettings(num_ps=2)), build_trainjob(cfg, RUN_ID, TrainJobSettings("ns"))
    port = str(free_port())
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "TMPDIR", "LANG")}
    pods = [("ps", i) for i in range(2)] + [("node", i) for i in range(2)]
    command = replicated(runtime, "ps")["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["python", "-m", "components.training"]  # no arguments: they arrive in TRAIN_ARGV
    procs = [subprocess.Popen([sys.executable, *command[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**base, **pod_env(runtime, job, name, i), **TEST_ONLY, "MASTER_PORT": port, "TRAIN_THREADS": "1"})
             for name, i in pods]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for (name, i), proc, output in zip(pods, procs, outputs):
        assert proc.returncode == 0, f"{name}-{i} exited {proc.returncode}:\n{output[-3000:]}"
    history = json.loads((Path(prepared.store_uri) / join_key(cfg.output_prefix, HISTORY_FILE)).read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1] and history["config"]["num_ps"] == 2
