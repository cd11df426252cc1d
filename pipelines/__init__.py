"""Pipeline wiring (:mod:`pipelines.pipeline`) and the command line (``python -m pipelines``)."""
