"""The pipeline's steps and the pieces they share.

Each step lives in its own sub-package: plain, typed logic modules plus a thin KFP wrapper in
``component.py``. The shared pieces live here, one module each, and are imported by training,
evaluation and serving alike:

- :mod:`components.store`: local-folder and Azure Blob stores behind one interface.
- :mod:`components.modelfile`: the model-version folder format (safetensors, model.json, MANIFEST.json).
- :mod:`components.nets`: network definitions.
- :mod:`components.presets`: every image transform (fitting to the input size, augmentation, normalization).
- :mod:`components.imagefile`: safe decoding of one image file (header checks before pixels).
- :mod:`components.parallel`: bounded concurrency for I/O.
- :mod:`components.registry`: the model registry (immutable numbered versions, production pointer).
"""
