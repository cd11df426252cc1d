"""Pure readers of an InferenceService (and its pods) as the API returns them: conditions, revisions,
fingerprints, URLs. No API calls, no waiting: the rollout decides what the answers mean.
"""

from __future__ import annotations

from typing import Any

from components.deploy.inferenceservice import SPEC_HASH_ANNOTATION


def conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj.get("status", {}).get("conditions", []))


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions(obj))


def condition_summary(obj: dict[str, Any], kind: str) -> str:
    found = [c for c in conditions(obj) if c.get("type") == kind]
    if not found:
        return f"no {kind} condition yet"
    c = found[0]
    return f"{c.get('status')} {c.get('reason', '')} {c.get('message', '')}".strip()


def generation_observed(obj: dict[str, Any]) -> bool:
    observed, generation = obj.get("status", {}).get("observedGeneration"), obj.get("metadata", {}).get("generation")
    return observed is None or generation is None or observed >= generation


def predictor_status(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status", {}).get("components", {}).get("predictor", {}))


def live_fingerprint(obj: dict[str, Any]) -> str | None:
    return obj.get("spec", {}).get("predictor", {}).get("annotations", {}).get(SPEC_HASH_ANNOTATION)


def pod_fingerprint(pod: dict[str, Any]) -> str | None:
    return pod.get("metadata", {}).get("annotations", {}).get(SPEC_HASH_ANNOTATION)


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions", []))


def service_url(live: dict[str, Any]) -> str:
    """The URL clients use (the external one when the service has one)."""
    status = live.get("status", {})
    return str(status.get("url") or status.get("address", {}).get("url") or "")


def internal_url(live: dict[str, Any]) -> str:
    """The cluster-local URL, which the deploy step (a pod in the cluster) can always reach."""
    status = live.get("status", {})
    return str(status.get("address", {}).get("url") or status.get("url") or "")
