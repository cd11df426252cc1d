"""manifests/aks/setup.sh: syntax, lint, and its behaviour against FAKE ``az`` and ``kubectl``.

Azure and a cluster cannot be reached from here, so two small bash stubs stand in for the CLIs: they log
every call, and a resource "exists" once a create/add call made it (a marker file per resource). That is
enough to check what the script creates, with which scopes and subjects, and that a second run creates
nothing (idempotence).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "manifests" / "aks" / "setup.sh"

FAKE_AZ = r"""#!/usr/bin/env bash
set -euo pipefail
echo "az $*" >> "$FAKE_STATE/calls.log"
args=("$@")
opt() { local i; for ((i = 0; i < ${#args[@]}; i++)); do if [[ "${args[i]}" == "$1" ]]; then echo "${args[i+1]}"; return; fi; done; }
words=(); for a in "$@"; do [[ "$a" == --* ]] && break; words+=("$a"); done
verb="${words[-1]}"; group="${words[*]:0:${#words[@]}-1}"
name="$(opt --name)"
if [[ "$group" == "role assignment" ]]; then
  key="role|$(opt --assignee)$(opt --assignee-object-id)|$(opt --role)|$(opt --scope)"
else
  key="$group|$(opt --identity-name)$(opt --storage-account)$(opt --cluster-name)|$name"
fi
marker="$FAKE_STATE/$(printf '%s' "$key" | md5sum | cut -c1-16)"
guid() { local h; h="$(printf '%s' "$1" | md5sum)"; echo "${h:0:8}-${h:8:4}-${h:12:4}-${h:16:4}-${h:20:12}"; }
case "$verb" in
  create|add) touch "$marker"; echo "$key" >> "$FAKE_STATE/created.log" ;;
  show)
    [[ -e "$marker" ]] || { echo "ERROR: (ResourceNotFound) $key" >&2; exit 3; }
    case "$(opt --query)" in
      id) echo "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/$name" ;;
      clientId) guid "client-$name" ;;
      principalId) guid "principal-$name" ;;
      oidcIssuerProfile.issuerUrl) echo "https://oidc.example/issuer/" ;;
      *enabled*) printf 'True\tTrue\n' ;;
    esac ;;
  list) if [[ -e "$marker" ]]; then echo 1; else echo 0; fi ;;
  *) ;;  # provider register, get-credentials, update, account set
esac
"""

FAKE_KUBECTL = r"""#!/usr/bin/env bash
set -euo pipefail
echo "kubectl $*" >> "$FAKE_STATE/calls.log"
case "$1" in
  apply) cat > "$FAKE_STATE/applied.yaml" ;;
  get) [[ "${FAKE_RUNNER_SA_EXISTS:-0}" == 1 ]] ;;
  *) ;;
esac
"""

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_the_script_is_valid_bash_with_strict_mode() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert "set -euo pipefail" in SCRIPT.read_text()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_the_script_passes_shellcheck() -> None:
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def make_fake_cli(tmp_path: Path) -> dict[str, str]:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("az", FAKE_AZ), ("kubectl", FAKE_KUBECTL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_STATE": str(state), "HOME": str(tmp_path),
        "ACR_NAME": "kfppsacr", "STORAGE_ACCOUNT": "kfppsstore", "IDENTITY_PATCH": str(tmp_path / "identity-patch.yaml"),
    }


def run_setup(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", str(SCRIPT)], env={**env, **extra}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def created(env: dict[str, str]) -> list[str]:
    log = Path(env["FAKE_STATE"]) / "created.log"
    return log.read_text().splitlines() if log.exists() else []


@dataclass
class Runs:
    """Two runs on the same fake subscription: before and after Kubeflow created the runner's account."""

    env: dict[str, str]
    first: subprocess.CompletedProcess[str]
    created_first: list[str]
    second: subprocess.CompletedProcess[str]
    created_second: list[str]

    def calls(self) -> str:
        return (Path(self.env["FAKE_STATE"]) / "calls.log").read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    env = make_fake_cli(tmp_path_factory.mktemp("aks"))
    first = run_setup(env)
    created_first = created(env)
    second = run_setup(env, FAKE_RUNNER_SA_EXISTS="1")
    return Runs(env, first, created_first, second, created(env))


def principal(identity: str) -> str:
    """The principal id the fake ``az`` gives ``identity`` (its guid of "principal-NAME")."""
    digest = hashlib.md5(f"principal-{identity}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def test_a_first_run_creates_everything_with_least_privilege_and_a_second_run_nothing(runs: Runs) -> None:
    account = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/kfppsstore"
    data, models, collected = (f"{account}/blobServices/default/containers/{c}" for c in ("data", "models", "collected"))
    pipeline, serving = principal("id-kfpps-pipeline"), principal("id-kfpps-serving")
    roles = sorted(k.split("|")[1:] for k in runs.created_first if k.startswith("role|"))

    assert {"group||rg-kfpps", "acr||kfppsacr", "aks||aks-kfpps", "aks nodepool|aks-kfpps|gpu",
            "storage account||kfppsstore", "storage container-rm|kfppsstore|data", "storage container-rm|kfppsstore|models",
            "storage container-rm|kfppsstore|collected",
            "identity||id-kfpps-pipeline", "identity||id-kfpps-serving"} <= set(runs.created_first)
    # The predictor reads models and writes only what it collects; the pipeline reads what was collected.
    assert roles == sorted([[pipeline, "Storage Blob Data Contributor", data], [pipeline, "Storage Blob Data Contributor", models],
                            [pipeline, "Storage Blob Data Reader", collected],
                            [serving, "Storage Blob Data Reader", models], [serving, "Storage Blob Data Contributor", collected]])
    assert runs.created_second == runs.created_first  # idempotent: the second run only checked


def test_the_gpu_pool_is_tainted_and_the_device_plugin_tolerates_the_taint(runs: Runs) -> None:
    calls = runs.calls()
    plugin = yaml.safe_load((Path(runs.env["FAKE_STATE"]) / "applied.yaml").read_text())
    pod = plugin["spec"]["template"]["spec"]

    assert "--node-taints sku=gpu:NoSchedule" in calls
    assert "--enable-oidc-issuer --enable-workload-identity" in calls
    assert "--allow-shared-key-access false" in calls
    assert {"key": "sku", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"kubernetes.azure.com/accelerator": "nvidia"}
    assert re.search(r":v\d+\.\d+\.\d+$", pod["containers"][0]["image"])  # a pinned version


def test_federated_credentials_name_the_service_accounts_and_the_patch_gets_the_client_ids(runs: Runs) -> None:
    calls = runs.calls()
    accounts = {d["metadata"]["name"]: d["metadata"]["annotations"]["azure.workload.identity/client-id"]
                for d in yaml.safe_load_all(Path(runs.env["IDENTITY_PATCH"]).read_text())}

    assert sorted(k for k in runs.created_first if k.startswith("identity federated-credential")) == [
        "identity federated-credential|id-kfpps-pipeline|fc-kubeflow-user-example-com-default-editor",
        "identity federated-credential|id-kfpps-pipeline|fc-kubeflow-user-example-com-kfp-ps-training",
        "identity federated-credential|id-kfpps-serving|fc-kubeflow-user-example-com-kfp-ps-serving",
    ]
    for account in ("default-editor", "kfp-ps-training", "kfp-ps-serving"):
        assert f"--subject system:serviceaccount:kubeflow-user-example-com:{account} --audiences api://AzureADTokenExchange" in calls
    assert set(accounts) == {"kfp-ps-training", "kfp-ps-serving"}
    assert all(GUID.match(v) for v in accounts.values()) and len(set(accounts.values())) == 2


def test_the_runner_service_account_is_annotated_once_kubeflow_created_it(runs: Runs) -> None:
    assert "does not exist yet" in runs.first.stdout
    assert "does not exist yet" not in runs.second.stdout
    assert re.search(r"kubectl annotate serviceaccount default-editor --namespace kubeflow-user-example-com --overwrite "
                     r"azure\.workload\.identity/client-id=[0-9a-f-]{36}", runs.calls())


def test_globally_unique_names_must_be_given(tmp_path: Path) -> None:
    fake_cli = make_fake_cli(tmp_path)
    env = {k: v for k, v in fake_cli.items() if k != "STORAGE_ACCOUNT"}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode != 0
    assert "set STORAGE_ACCOUNT" in done.stderr
    assert not (Path(fake_cli["FAKE_STATE"]) / "calls.log").exists()  # refused before calling anything
