"""Shared fixtures. The storage fixtures live in :mod:`tests.azurite`; importing them here shares them."""

from tests.azurite import azurite, store_uri  # noqa: F401  (pytest finds fixtures by name)
