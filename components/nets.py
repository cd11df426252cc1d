"""Network definitions: the one place that turns an architecture name into a ``torch.nn.Module``.

Training (workers and parameter servers), evaluation and serving all call :func:`build_model`, so a
model version's ``model.json`` is enough to rebuild the exact network its weights belong to.
"""

from __future__ import annotations

from torch import nn

from components.archs import ARCHITECTURES, SMALL_CNN, TORCHVISION_ARCHS

__all__ = ["ARCHITECTURES", "SMALL_CNN", "TORCHVISION_ARCHS", "build_model"]


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    # GroupNorm rather than BatchNorm: it has no running statistics, so the parameters that the
    # parameter servers hold are the model's whole state (nothing to reconcile between workers).
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(4, c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Two double-conv blocks and a small classifier (~45k parameters at width 16)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, width),
            *_conv_block(width, width),
            nn.MaxPool2d(2),
            *_conv_block(width, 2 * width),
            *_conv_block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            # Adaptive pooling makes the classifier independent of the input size.
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    """Build an untrained network for ``in_channels``-channel images and ``num_classes`` classes."""
    if arch == SMALL_CNN:
        return SmallCNN(in_channels, num_classes)
    if arch in TORCHVISION_ARCHS:
        return _torchvision_model(arch, in_channels, num_classes)
    raise ValueError(f"expected an architecture in {ARCHITECTURES}, got {arch!r}")


def _torchvision_model(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision  # imported lazily: the small CNN needs none of it

    # weights=None: nothing is ever downloaded from a hub at run time.
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the stem convolution for one that takes ``in_channels`` channels."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            replacement = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                bias=module.bias is not None,
            )
            setattr(parent, name.rsplit(".", 1)[-1], replacement)
            return
    raise ValueError("found no 3-channel stem convolution to adapt")
