"""The deploy step.

- :mod:`components.deploy.inferenceservice`: ``build_inference_service(settings) -> dict``, pure.
- :mod:`components.deploy.kserve`: target ``kserve`` — pin the version, roll out, move the production pointer.
- :mod:`components.deploy.rollout`: create or canary-patch, wait, smoke, promote or roll back (fake-able API and clock).
- :mod:`components.deploy.kserve_api`: the InferenceService API the rollout uses, and its adapter on :mod:`components.kube`.
- :mod:`components.deploy.isvc_status`: pure readers of an InferenceService's status.
- :mod:`components.deploy.render`: the manifests as YAML files (``python -m pipelines render``).
- :mod:`components.deploy.examples`: the example InferenceServices in ``manifests/overlays``.
"""
