"""The decorator every KFP component uses: the pinned project image, which already contains kfp.

``install_kfp_package=False`` because the image has the pinned kfp (air-gapped clusters have no
registry); the component bodies import the project's modules, which the image installs.
"""

from __future__ import annotations

from collections.abc import Callable

from kfp import dsl

from components.cluster import project_image


def project_component(func: Callable) -> Callable:
    return dsl.component(base_image=project_image(), install_kfp_package=False)(func)
