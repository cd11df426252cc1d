#!/usr/bin/env bash
# One-time Azure setup for the project, from an empty subscription to a cluster ready for Kubeflow:
#
#   1. resource providers, resource group, container registry (ACR)
#   2. AKS cluster with the OIDC issuer, workload identity and a network policy engine (Cilium)
#   3. a GPU node pool, tainted so that only pods that tolerate it (training workers, the predictor) land there
#   4. the NVIDIA device plugin, which makes nvidia.com/gpu schedulable
#   5. a storage account (no public blobs, no shared keys) with the data, models and collected containers
#   6. two managed identities: "pipeline" (reads and writes data and models, reads collected) and "serving"
#      (reads models, writes what the predictor collects of its requests: collect_uri)
#   7. least-privilege role assignments on the containers, and federated credentials for the service accounts
#   8. the identities' client IDs written into the overlay (manifests/overlays/$OVERLAY/identity-patch.yaml)
#
# Idempotent: every step checks before it creates, so a re-run after a failure picks up where it stopped.
# Every name is a variable; override any of them in the environment, e.g.
#   STORAGE_ACCOUNT=kfppsdemo42 ACR_NAME=kfppsdemo42 LOCATION=eastus bash manifests/aks/setup.sh
# Needs: az (logged in: az login), kubectl.
set -euo pipefail

# -- names (override from the environment) -------------------------------------------------------------
SUBSCRIPTION_ID="${SUBSCRIPTION_ID:-}"                  # empty: the az CLI's current subscription
LOCATION="${LOCATION:-westeurope}"
RESOURCE_GROUP="${RESOURCE_GROUP:-rg-kfpps}"
CLUSTER_NAME="${CLUSTER_NAME:-aks-kfpps}"
SYSTEM_VM_SIZE="${SYSTEM_VM_SIZE:-Standard_D8ds_v5}"   # Kubeflow itself needs roughly 16 vCPU / 64 GiB
SYSTEM_NODE_COUNT="${SYSTEM_NODE_COUNT:-3}"
GPU_POOL_NAME="${GPU_POOL_NAME:-gpu}"                  # lowercase letters and digits, at most 12
GPU_VM_SIZE="${GPU_VM_SIZE:-Standard_NC24ads_A100_v4}" # or Standard_NC40ads_H100_v5 (NCv3 is retired)
GPU_MIN_NODES="${GPU_MIN_NODES:-0}"                    # the autoscaler adds GPU nodes when pods need them
GPU_MAX_NODES="${GPU_MAX_NODES:-2}"
GPU_TAINT_KEY="${GPU_TAINT_KEY:-sku}"                  # must match components.cluster.GpuProfile
GPU_TAINT_VALUE="${GPU_TAINT_VALUE:-gpu}"
GPU_POOL_LABEL="${GPU_POOL_LABEL:-workload=gpu}"       # AKS adds kubernetes.azure.com/accelerator=nvidia itself
NVIDIA_DEVICE_PLUGIN_VERSION="${NVIDIA_DEVICE_PLUGIN_VERSION:-v0.17.0}"
ACR_NAME="${ACR_NAME:?set ACR_NAME: a globally unique registry name (5-50 letters and digits)}"
STORAGE_ACCOUNT="${STORAGE_ACCOUNT:?set STORAGE_ACCOUNT: a globally unique name (3-24 lowercase letters and digits)}"
DATA_CONTAINER="${DATA_CONTAINER:-data}"
MODELS_CONTAINER="${MODELS_CONTAINER:-models}"
COLLECTED_CONTAINER="${COLLECTED_CONTAINER:-collected}"  # inference statistics (collect_uri), for the drift report
PIPELINE_IDENTITY="${PIPELINE_IDENTITY:-id-kfpps-pipeline}"
SERVING_IDENTITY="${SERVING_IDENTITY:-id-kfpps-serving}"
NAMESPACE="${NAMESPACE:-kubeflow-user-example-com}"    # the Kubeflow profile namespace the pipeline runs in
PIPELINE_RUNNER_SA="${PIPELINE_RUNNER_SA:-default-editor}"  # KFP's run service account there
TRAINING_SA="${TRAINING_SA:-kfp-ps-training}"          # names as in manifests/base/serviceaccounts.yaml
SERVING_SA="${SERVING_SA:-kfp-ps-serving}"
OVERLAY="${OVERLAY:-aks}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IDENTITY_PATCH="${IDENTITY_PATCH:-${REPO_ROOT}/manifests/overlays/${OVERLAY}/identity-patch.yaml}"

log() { printf '\n==> %s\n' "$*"; }

# -- helpers: each checks first, then creates ----------------------------------------------------------

exists() { "$@" --output none 2>/dev/null; }

ensure_role() {  # ensure_role PRINCIPAL_ID ROLE SCOPE
  local count
  count="$(az role assignment list --assignee "$1" --role "$2" --scope "$3" --query 'length(@)' --output tsv)"
  if [[ "$count" == "0" ]]; then
    az role assignment create --assignee-object-id "$1" --assignee-principal-type ServicePrincipal \
      --role "$2" --scope "$3" --output none
  fi
}

ensure_federated() {  # ensure_federated IDENTITY SERVICE_ACCOUNT ISSUER
  local name="fc-${NAMESPACE}-${2}"
  if ! exists az identity federated-credential show --name "$name" --identity-name "$1" --resource-group "$RESOURCE_GROUP"; then
    az identity federated-credential create --name "$name" --identity-name "$1" --resource-group "$RESOURCE_GROUP" \
      --issuer "$3" --subject "system:serviceaccount:${NAMESPACE}:${2}" --audiences api://AzureADTokenExchange --output none
  fi
}

# -- 1. subscription, providers, resource group, registry ---------------------------------------------
if [[ -n "$SUBSCRIPTION_ID" ]]; then
  az account set --subscription "$SUBSCRIPTION_ID"
fi
log "resource providers (a fresh subscription has none registered)"
for provider in Microsoft.ContainerService Microsoft.ContainerRegistry Microsoft.Storage Microsoft.ManagedIdentity; do
  az provider register --namespace "$provider" --wait --output none
done

log "resource group $RESOURCE_GROUP"
exists az group show --name "$RESOURCE_GROUP" \
  || az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none

log "container registry $ACR_NAME"
exists az acr show --name "$ACR_NAME" --resource-group "$RESOURCE_GROUP" \
  || az acr create --name "$ACR_NAME" --resource-group "$RESOURCE_GROUP" --sku Standard --admin-enabled false --output none

# -- 2. the cluster -----------------------------------------------------------------------------------
log "AKS cluster $CLUSTER_NAME (OIDC issuer, workload identity, Cilium network policy)"
if ! exists az aks show --name "$CLUSTER_NAME" --resource-group "$RESOURCE_GROUP"; then
  az aks create --name "$CLUSTER_NAME" --resource-group "$RESOURCE_GROUP" --location "$LOCATION" \
    --node-vm-size "$SYSTEM_VM_SIZE" --node-count "$SYSTEM_NODE_COUNT" \
    --network-plugin azure --network-plugin-mode overlay --network-dataplane cilium \
    --enable-oidc-issuer --enable-workload-identity \
    --attach-acr "$ACR_NAME" --generate-ssh-keys --output none
else
  # An existing cluster: switch on what the project needs (no-ops when already on).
  enabled="$(az aks show --name "$CLUSTER_NAME" --resource-group "$RESOURCE_GROUP" \
    --query '[oidcIssuerProfile.enabled, securityProfile.workloadIdentity.enabled]' --output tsv | tr -d '[:space:]' | tr '[:upper:]' '[:lower:]')"
  if [[ "$enabled" != "truetrue" ]]; then
    az aks update --name "$CLUSTER_NAME" --resource-group "$RESOURCE_GROUP" \
      --enable-oidc-issuer --enable-workload-identity --output none
  fi
  az aks update --name "$CLUSTER_NAME" --resource-group "$RESOURCE_GROUP" --attach-acr "$ACR_NAME" --output none
fi

# -- 3. GPU node pool -----------------------------------------------------------------------------------
log "GPU node pool $GPU_POOL_NAME ($GPU_VM_SIZE, taint $GPU_TAINT_KEY=$GPU_TAINT_VALUE:NoSchedule)"
if ! exists az aks nodepool show --cluster-name "$CLUSTER_NAME" --resource-group "$RESOURCE_GROUP" --name "$GPU_POOL_NAME"; then
  # The taint keeps CPU pods off the expensive nodes; only pods with the matching toleration land here.
  az aks nodepool add --cluster-name "$CLUSTER_NAME" --resource-group "$RESOURCE_GROUP" --name "$GPU_POOL_NAME" \
    --node-vm-size "$GPU_VM_SIZE" --node-taints "${GPU_TAINT_KEY}=${GPU_TAINT_VALUE}:NoSchedule" \
    --labels "$GPU_POOL_LABEL" --enable-cluster-autoscaler --min-count "$GPU_MIN_NODES" \
    --max-count "$GPU_MAX_NODES" --node-count "$GPU_MIN_NODES" --output none
fi

az aks get-credentials --name "$CLUSTER_NAME" --resource-group "$RESOURCE_GROUP" --overwrite-existing --output none

# -- 4. NVIDIA device plugin ------------------------------------------------------------------------------
# AKS installs the driver on GPU nodes; the device plugin advertises nvidia.com/gpu to the scheduler.
# It must tolerate the pool's taint, or it never runs where the GPUs are.
log "NVIDIA device plugin $NVIDIA_DEVICE_PLUGIN_VERSION"
kubectl apply -f - <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: nvidia-device-plugin-daemonset
  namespace: kube-system
spec:
  selector:
    matchLabels: {name: nvidia-device-plugin-ds}
  updateStrategy: {type: RollingUpdate}
  template:
    metadata:
      labels: {name: nvidia-device-plugin-ds}
    spec:
      nodeSelector: {kubernetes.azure.com/accelerator: nvidia}
      tolerations:
      - {key: ${GPU_TAINT_KEY}, operator: Exists, effect: NoSchedule}
      - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
      priorityClassName: system-node-critical
      containers:
      - name: nvidia-device-plugin-ctr
        image: nvcr.io/nvidia/k8s-device-plugin:${NVIDIA_DEVICE_PLUGIN_VERSION}
        env: [{name: FAIL_ON_INIT_ERROR, value: "false"}]
        securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: ["ALL"]}}
        volumeMounts: [{name: device-plugin, mountPath: /var/lib/kubelet/device-plugins}]
      volumes: [{name: device-plugin, hostPath: {path: /var/lib/kubelet/device-plugins}}]
EOF

# -- 5. storage -------------------------------------------------------------------------------------------
log "storage account $STORAGE_ACCOUNT with containers $DATA_CONTAINER, $MODELS_CONTAINER and $COLLECTED_CONTAINER"
if ! exists az storage account show --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP"; then
  # Entra ID only: no account keys, no anonymous blobs, TLS 1.2+.
  az storage account create --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP" --location "$LOCATION" \
    --sku Standard_LRS --kind StorageV2 --https-only true --min-tls-version TLS1_2 \
    --allow-blob-public-access false --allow-shared-key-access false --output none
fi
for container in "$DATA_CONTAINER" "$MODELS_CONTAINER" "$COLLECTED_CONTAINER"; do
  # container-rm works through Azure Resource Manager: no data-plane role or key needed for this step.
  exists az storage container-rm show --storage-account "$STORAGE_ACCOUNT" --name "$container" --resource-group "$RESOURCE_GROUP" \
    || az storage container-rm create --storage-account "$STORAGE_ACCOUNT" --name "$container" \
         --resource-group "$RESOURCE_GROUP" --public-access off --output none
done
account_id="$(az storage account show --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP" --query id --output tsv)"
data_scope="${account_id}/blobServices/default/containers/${DATA_CONTAINER}"
models_scope="${account_id}/blobServices/default/containers/${MODELS_CONTAINER}"
collected_scope="${account_id}/blobServices/default/containers/${COLLECTED_CONTAINER}"

# -- 6. identities and 7. least-privilege roles ------------------------------------------------------------
log "managed identities $PIPELINE_IDENTITY and $SERVING_IDENTITY"
for identity in "$PIPELINE_IDENTITY" "$SERVING_IDENTITY"; do
  exists az identity show --name "$identity" --resource-group "$RESOURCE_GROUP" \
    || az identity create --name "$identity" --resource-group "$RESOURCE_GROUP" --location "$LOCATION" --output none
done
pipeline_principal="$(az identity show --name "$PIPELINE_IDENTITY" --resource-group "$RESOURCE_GROUP" --query principalId --output tsv)"
pipeline_client="$(az identity show --name "$PIPELINE_IDENTITY" --resource-group "$RESOURCE_GROUP" --query clientId --output tsv)"
serving_principal="$(az identity show --name "$SERVING_IDENTITY" --resource-group "$RESOURCE_GROUP" --query principalId --output tsv)"
serving_client="$(az identity show --name "$SERVING_IDENTITY" --resource-group "$RESOURCE_GROUP" --query clientId --output tsv)"

log "role assignments: pipeline writes data and models, serving reads models and writes collected (container scope only)"
ensure_role "$pipeline_principal" "Storage Blob Data Contributor" "$data_scope"
ensure_role "$pipeline_principal" "Storage Blob Data Contributor" "$models_scope"
ensure_role "$serving_principal" "Storage Blob Data Reader" "$models_scope"
# The predictor writes its collected records with its own identity: to that container only, never to the models.
ensure_role "$serving_principal" "Storage Blob Data Contributor" "$collected_scope"
ensure_role "$pipeline_principal" "Storage Blob Data Reader" "$collected_scope"  # the drift report reads them

log "federated credentials for system:serviceaccount:${NAMESPACE}:{${PIPELINE_RUNNER_SA},${TRAINING_SA},${SERVING_SA}}"
issuer="$(az aks show --name "$CLUSTER_NAME" --resource-group "$RESOURCE_GROUP" --query oidcIssuerProfile.issuerUrl --output tsv)"
ensure_federated "$PIPELINE_IDENTITY" "$PIPELINE_RUNNER_SA" "$issuer"  # the KFP steps (prepare, push, deploy …)
ensure_federated "$PIPELINE_IDENTITY" "$TRAINING_SA" "$issuer"         # the PyTorchJob replicas (checkpoints)
ensure_federated "$SERVING_IDENTITY" "$SERVING_SA" "$issuer"           # the predictor's storage initializer

# -- 8. client IDs into the manifests ---------------------------------------------------------------------
log "writing the client IDs into ${IDENTITY_PATCH}"
cat > "$IDENTITY_PATCH" <<EOF
# The managed identities' client IDs, written by manifests/aks/setup.sh for ${RESOURCE_GROUP}.
apiVersion: v1
kind: ServiceAccount
metadata:
  name: ${TRAINING_SA}
  annotations:
    azure.workload.identity/client-id: ${pipeline_client}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: ${SERVING_SA}
  annotations:
    azure.workload.identity/client-id: ${serving_client}
EOF

# KFP's run service account belongs to Kubeflow (the profile controller creates it), so it is annotated
# here rather than in the overlay — once Kubeflow and the profile exist.
if kubectl get serviceaccount "$PIPELINE_RUNNER_SA" --namespace "$NAMESPACE" --output name >/dev/null 2>&1; then
  kubectl annotate serviceaccount "$PIPELINE_RUNNER_SA" --namespace "$NAMESPACE" --overwrite \
    "azure.workload.identity/client-id=${pipeline_client}"
else
  echo "note: ${NAMESPACE}/${PIPELINE_RUNNER_SA} does not exist yet; re-run this script after installing Kubeflow"
fi

log "done"
cat <<EOF
Store URIs for the pipeline:
  data:   https://${STORAGE_ACCOUNT}.blob.core.windows.net/${DATA_CONTAINER}
  models: https://${STORAGE_ACCOUNT}.blob.core.windows.net/${MODELS_CONTAINER}
  collect_uri: https://${STORAGE_ACCOUNT}.blob.core.windows.net/${COLLECTED_CONTAINER}
Next: install Kubeflow, then  kubectl apply -k ${REPO_ROOT}/manifests/overlays/${OVERLAY}
Image registry: ${ACR_NAME}.azurecr.io   (az acr login --name ${ACR_NAME}; make images REGISTRY=${ACR_NAME}.azurecr.io)
EOF
