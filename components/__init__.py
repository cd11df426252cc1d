"""The pipeline's steps and the pieces they share.

Each step lives in its own sub-package: plain, typed logic modules plus a thin KFP wrapper in
``component.py``. The shared pieces live here, one module each, and are imported by training,
evaluation and serving alike:

- :mod:`components.store`: local-folder and Azure Blob stores behind one interface.
- :mod:`components.modelfile`: the model-version folder format (safetensors, model.json, MANIFEST.json).
- :mod:`components.nets`: network definitions.
- :mod:`components.preprocessing`: image conversion and normalization.
- :mod:`components.registry`: the model registry (immutable numbered versions, production pointer).
"""
