"""What the predictor is told to collect: one set of options, turned into its command-line flags.

The deploy step passes these through from the pipeline's parameters, to the local server and to the
InferenceService's predictor alike, so both collect the same way. Off unless a store URI is given.
On AKS the predictor writes with its own identity (the serving service account), which may write to the
collection container only (manifests/aks/setup.sh), never to the models it serves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CollectionOptions:
    uri: str = ""  # a store URI (local folder or Azure Blob); "" leaves collection off
    fraction: float = 0.1  # requests recorded (statistics and prediction of each image)
    images_fraction: float = 0.01  # requests whose preprocessed images are saved too

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"expected collect_fraction between 0 and 1, got {self.fraction}")
        if not 0.0 <= self.images_fraction <= self.fraction:
            raise ValueError(f"expected collect_images_fraction between 0 and collect_fraction ({self.fraction}): an image "
                             f"is saved only with its record, got {self.images_fraction}")

    @property
    def enabled(self) -> bool:
        return bool(self.uri) and self.fraction > 0

    def predictor_args(self) -> list[str]:
        """The predictor's flags (``python -m serving``); none when collection is off."""
        if not self.enabled:
            return []
        return ["--collect-uri", self.uri, "--collect-fraction", f"{self.fraction:g}",
                "--collect-images-fraction", f"{self.images_fraction:g}"]
