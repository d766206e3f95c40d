"""Measurements of CRA's mechanism (report only): how far untrusted features lie from trusted
ones of the same class, and which pixels sit on class borders."""

from __future__ import annotations

import numpy as np
import torch


def touches_other_class(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Pixels with a valid label whose 3×3 neighbourhood holds another valid label (class borders).

    Shape:
        - label: (H, W) integer train IDs
        - output: (H, W) bool
    """
    padded = np.pad(label, 1, mode="edge")
    height, width = label.shape
    border = np.zeros(label.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            neighbour = padded[dy : dy + height, dx : dx + width]
            border |= (neighbour != label) & (neighbour != ignore_index)
    return border & (label != ignore_index)


class FeatureGap:
    """The gap between untrusted and trusted features of the same class, accumulated over images.

    For class c: ||μ_trusted − μ_untrusted|| / s, with s the RMS distance of the trusted features
    of c to μ_trusted (the class's own spread, so the number does not depend on the feature
    scale of a model). 0 = the two regions' class means coincide; 1 = they lie one typical
    within-class distance apart. Sums are kept in float64.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sums: torch.Tensor | None = None  # (2, K, C): region (trusted, untrusted) x class
        self.square_sums = torch.zeros(2, num_classes, dtype=torch.float64)
        self.cells = torch.zeros(2, num_classes, dtype=torch.float64)

    def add(self, features: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor) -> None:
        """Add one image's feature cells; labels >= K (ignore) are skipped.

        Shape:
            - features: (C, h, w)
            - labels: (h, w) integer class per cell
            - trusted: (h, w) bool
        """
        flat = features.flatten(1).T.double()  # (cells, C)
        labels, trusted = labels.flatten().long(), trusted.flatten()
        if self.sums is None:
            self.sums = torch.zeros(2, self.num_classes, flat.shape[1], dtype=torch.float64)
        for region, selected in enumerate((trusted, ~trusted)):
            keep = selected & (labels >= 0) & (labels < self.num_classes)
            one_hot = torch.nn.functional.one_hot(labels[keep], self.num_classes).double()  # (n, K)
            self.sums[region] += one_hot.T @ flat[keep]
            self.square_sums[region] += one_hot.T @ flat[keep].pow(2).sum(dim=1)
            self.cells[region] += one_hot.sum(dim=0)

    def per_class(self, min_cells: int = 20) -> list[float | None]:
        """The gap of each class; None where either region has fewer than ``min_cells`` cells."""
        gaps: list[float | None] = []
        for c in range(self.num_classes):
            if self.sums is None or self.cells[0, c] < min_cells or self.cells[1, c] < min_cells:
                gaps.append(None)
                continue
            mean_trusted = self.sums[0, c] / self.cells[0, c]
            mean_untrusted = self.sums[1, c] / self.cells[1, c]
            spread = (self.square_sums[0, c] / self.cells[0, c] - mean_trusted.pow(2).sum()).clamp(min=1e-12).sqrt()
            gaps.append(float((mean_trusted - mean_untrusted).norm() / spread))
        return gaps
