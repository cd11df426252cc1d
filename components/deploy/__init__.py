"""The deploy step.

- :mod:`components.deploy.inferenceservice`: ``build_inference_service(settings) -> dict``, pure.
- :mod:`components.deploy.kserve`: target ``kserve`` — create or canary-patch, wait, smoke, promote or roll back.
- :mod:`components.deploy.render`: the manifests as YAML files (``python -m pipelines render``).
- :mod:`components.deploy.examples`: the example InferenceServices in ``manifests/overlays``.
"""
