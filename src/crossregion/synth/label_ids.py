"""Cityscapes label IDs by class name, and the official colours of a label map."""

from __future__ import annotations

import numpy as np

from crossregion.data.labels import CITYSCAPES_LABELS

ID = {label.name: label.id for label in CITYSCAPES_LABELS if label.id >= 0}

COLOURISE_LUT = np.zeros((256, 3), dtype=np.uint8)
for _label in CITYSCAPES_LABELS:
    if _label.id >= 0:
        COLOURISE_LUT[_label.id] = _label.color


def colourise(labels: np.ndarray) -> np.ndarray:
    """Cityscapes label IDs to the official Cityscapes colours.

    Shape:
        - labels: (H, W) uint8
        - output: (H, W, 3) uint8
    """
    return COLOURISE_LUT[labels]
