"""The architecture names a model card or a training run may name: plain strings, importable without torch
(the registry, the CLI and configuration checks need the names; only :mod:`components.nets` builds networks)."""

from __future__ import annotations

SMALL_CNN = "small_cnn"
TORCHVISION_ARCHS = ("resnet18", "mobilenet_v3_small")
ARCHITECTURES = (SMALL_CNN, *TORCHVISION_ARCHS)
