"""The KServe predictor for the project's model versions, and a REST client for it."""
