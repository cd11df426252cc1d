"""Forward passes on ``uint8`` images: the one path from pixels to class probabilities.

Training's validation, the evaluation step and the predictor all call :func:`predict_proba`, so
normalization can never differ between them.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from components.modelfile import ModelCard
from components.presets import normalize


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, card: ModelCard, batch_size: int = 512) -> torch.Tensor:
    """Logits for ``[N,C,H,W]`` pixel values (0–255), computed in batches on the model's device."""
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start : start + batch_size].to(device), card.mean, card.std)
        outputs.append(model(batch).float().cpu())
    if not outputs:
        return torch.empty(0, card.num_classes)
    return torch.cat(outputs)


def predict_proba(model: torch.nn.Module, images: torch.Tensor, card: ModelCard, batch_size: int = 512) -> torch.Tensor:
    """Class probabilities ``[N, num_classes]`` for ``[N,C,H,W]`` pixel values (0–255)."""
    return F.softmax(predict_logits(model, images, card, batch_size), dim=1)
