"""`make image-test`, the part that runs inside the built image (started by .ci/image-test as the image's user).

The image is where every KFP step, training pod and predictor runs, so each check starts the project the way
the cluster does, with the image's own interpreter and packages, over loopback only:

1. who it runs as: the non-root user the manifests expect;
2. its Python packages: ``pip check`` passes and they are exactly ``requirements.lock`` plus the project (and
   pip), so no test tool is inside;
3. one KFP component (prepare_data) through the KFP executor, with the command and arguments taken from the
   pipeline compiled in the image (``python -m pipelines compile``);
4. the rank entry point (``python -m components.training``): one parameter server and 2 workers train one
   epoch on the data set step 3 prepared, with the variables a PyTorchJob's pods get;
5. the model step 4 trained, registered with the registry (``Registry.push``) and served by
   ``python -m serving``, answers a v1 predict and a v2 infer.

Prints one line per check and exits non-zero at the first failure. Uses only the image's packages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT = "kfp-ps-classifier"
RUN_AS_USER = 1000  # components.deploy.inferenceservice.RUN_AS_USER, repeated so check 1 needs no import
TEST_TOOLS = {"pytest", "hypothesis", "schemathesis", "ruff", "jsonschema"}
COMPONENT = "prepare-data"  # cheap: reads the bundled sample, writes a few shards
MODEL_NAME = "digits"


class SmokeError(RuntimeError):
    """A check found the image not doing what the cluster relies on."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_user() -> str:
    uid = os.getuid()
    if uid != RUN_AS_USER:
        raise SmokeError(f"expected the image to run as uid {RUN_AS_USER} (the manifests' runAsUser), got uid {uid}")
    return f"runs as uid {uid}"


def read_lock(path: Path) -> dict[str, str]:
    pins = (line.split("==") for line in path.read_text().split())
    return {normalize(name): version for name, version in pins}


def check_packages(lock: Path) -> str:
    """pip check, and the installed distributions are the lock's, plus the project and pip, and nothing else."""
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SmokeError(f"expected `pip check` to pass, got:\n{result.stdout}{result.stderr}")
    installed = {normalize(d.metadata["Name"]): d.version for d in metadata.distributions()}
    expected = read_lock(lock)
    # pip freeze (hence the lock) leaves out pip and setuptools; torch and grpcio-tools require setuptools.
    extra = sorted(set(installed) - set(expected) - {normalize(PROJECT), "pip", "setuptools"})
    differ = sorted(f"{n} {installed.get(n)} (lock {v})" for n, v in expected.items() if installed.get(n) != v)
    if extra or differ or TEST_TOOLS & set(installed):
        raise SmokeError(f"expected exactly the packages of requirements.lock; not in the lock: {extra}; "
                         f"missing or another version: {differ}")
    return f"pip check passes; {len(installed)} distributions = requirements.lock ({len(expected)}) + {PROJECT}, pip, setuptools {installed.get('setuptools')}"


def compile_pipeline(work: Path) -> dict[str, Any]:
    import yaml

    package = work / "pipeline.yaml"
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--output", str(package)], check=True,
                   stdout=subprocess.DEVNULL)
    # The package is the pipeline spec, then the kfp-kubernetes platform spec: two YAML documents.
    return next(yaml.safe_load_all(package.read_text()))


def executor_input(work: Path, raw_uri: str, store_uri: str) -> dict[str, Any]:
    """What the KFP launcher hands prepare_data: its parameters, and local paths for its two output artifacts."""
    def artifact(name: str, schema: str) -> dict[str, Any]:
        uri = str(work / "artifacts" / name)
        return {"artifacts": [{"name": name, "type": {"schemaTitle": schema, "schemaVersion": "0.0.1"}, "uri": uri, "metadata": {}}]}

    parameters = {"data_uri": raw_uri, "store_uri": store_uri, "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0,
                  "image_size": 0, "max_unreadable": 0}
    return {"inputs": {"parameterValues": parameters},
            "outputs": {"artifacts": {"dataset": artifact("dataset", "system.Dataset"), "report": artifact("report", "system.Markdown")},
                        "outputFile": str(work / "artifacts" / "executor_output.json")}}


def run_component(pipeline: dict[str, Any], work: Path, image: str) -> dict[str, Any]:
    """prepare_data as its pod runs it: the compiled command and args, with the executor input substituted."""
    from components.data.sample import write_sample

    container = pipeline["deploymentSpec"]["executors"][f"exec-{COMPONENT}"]["container"]
    if container["image"] != image:
        raise SmokeError(f"expected the compiled pipeline to run {image} (PIPELINE_IMAGE), found {container['image']}")
    raw_uri, store_uri = write_sample(str(work / "raw")), str(work / "store")
    (work / "artifacts").mkdir()
    payload = json.dumps(executor_input(work, raw_uri, store_uri))
    argv = container["command"] + [payload if arg == "{{$}}" else arg for arg in container["args"]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SmokeError(f"expected the {COMPONENT} component to succeed, it exited {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads((work / "artifacts" / "dataset").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(dataset: dict[str, Any], output_prefix: str) -> str:
    """One parameter server and 2 workers, each a `python -m components.training` process with its pod's variables."""
    from components.training.config import TrainConfig, to_argv

    config = TrainConfig(store_uri=dataset["store_uri"], dataset_prefix=dataset["prefix"], output_prefix=output_prefix,
                         epochs=1, batch_size=64, num_ps=1, num_workers=2, rpc_timeout_s=120)
    ranks = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(config.world_size),
             "TP_SOCKET_IFNAME": "lo", "GLOO_SOCKET_IFNAME": "lo", "TRAIN_THREADS": "1"}
    command = [sys.executable, "-m", "components.training", *to_argv(config)]
    procs = [subprocess.Popen(command, env={**os.environ, **ranks, "RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in range(config.world_size)]
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs)):
        if proc.returncode != 0:
            raise SmokeError(f"expected rank {rank} of 3 to exit 0, it exited {proc.returncode}:\n{output[-3000:]}")
    return f"1 parameter server + 2 workers trained 1 epoch ({config.world_size} ranks exited 0)"


def register(store_uri: str, output_prefix: str, work: Path) -> str:
    """The trained model as version 1 of the registry in the same store; its URI."""
    from components.modelfile import METRICS_FILE
    from components.registry import Registry
    from components.store import open_store
    from components.training.worker import HISTORY_FILE

    store, folder = open_store(store_uri), work / "trained"
    store.download_prefix(output_prefix, folder)
    history = json.loads((folder / HISTORY_FILE).read_text())
    if [epoch["epoch"] for epoch in history["epochs"]] != [1]:
        raise SmokeError(f"expected the training history to hold epoch 1, got {history['epochs']}")
    (folder / HISTORY_FILE).unlink()
    (folder / METRICS_FILE).write_text(json.dumps({"accuracy": 0.0}))
    registry = Registry(store, MODEL_NAME)
    version = registry.push(folder, {"metrics": {}, "verdict": {"decision": "smoke-test"}, "lineage": {"source": "image smoke test"}})
    return registry.version_uri(version)


@contextmanager
def predictor(model_uri: str, log: Path):
    """`python -m serving` on a free loopback port; its base URL once the model reports ready."""
    from serving.client import is_ready

    port = free_port()
    command = [sys.executable, "-m", "serving", "--model-uri", model_uri, "--model-name", MODEL_NAME,
               "--http-port", str(port), "--enable_grpc", "false"]
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    with open(log, "wb") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        while not is_ready(url, MODEL_NAME):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SmokeError(f"expected the predictor to become ready within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def check_serving(model_uri: str, work: Path) -> str:
    import numpy as np

    from components.modelfile import load_card
    from components.store import open_store
    from serving.client import infer_v2, predict_v1, v2_classes

    card = load_card(Path(open_store(model_uri).uri))
    pixels = np.random.default_rng(0).random((2, card.in_channels, card.height, card.width), dtype=np.float32)
    with predictor(model_uri, work / "predictor.log") as url:
        v1, v2 = predict_v1(url, MODEL_NAME, pixels), v2_classes(infer_v2(url, MODEL_NAME, pixels))
    if len(v1) != 2 or len(v2) != 2:
        raise SmokeError(f"expected 2 predictions from each protocol, got v1 {v1} and v2 {v2}")
    return f"the predictor served {model_uri}: v1 and v2 answered over loopback (v2 classes {v2})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, required=True, help="requirements.lock of the checkout the image was built from")
    parser.add_argument("--work", type=Path, required=True, help="an empty writable folder")
    parser.add_argument("--image", required=True, help="the image's reference, which the compiled pipeline must name")
    args = parser.parse_args(argv)
    output_prefix = "runs/image-smoke/model"
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"ok  {check_user()}", flush=True)
    print(f"ok  {check_packages(args.lock)}", flush=True)
    dataset = run_component(compile_pipeline(args.work), args.work, args.image)
    print(f"ok  the {COMPONENT} component ran through the KFP executor: {dataset['prefix']}", flush=True)
    print(f"ok  {train(dataset, output_prefix)}", flush=True)
    print(f"ok  {check_serving(register(dataset['store_uri'], output_prefix, args.work), args.work)}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SmokeError as error:
        sys.exit(f"FAILED  {error}")
