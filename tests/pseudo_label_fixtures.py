"""Helpers of the CRA, baseline and self-distillation tests: a tiny segmenter with BatchNorm,
a finished pseudo-label store with chosen class counts, and a step context.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from crossregion.data.labels import CITYSCAPES_19
from crossregion.data.pseudo_labels import PseudoLabelWriter
from crossregion.engine.amp import build_grad_scaler
from crossregion.engine.trainer import StepContext

NUM_CLASSES = 4


class TinySegmenter(nn.Module):
    """conv (stride 2) + BatchNorm + ReLU features, a 3x3 conv head: stride-2 logits to upsample."""

    feature_channels = 6

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(3, self.feature_channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(self.feature_channels),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(self.feature_channels, num_classes, 3, padding=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.feature_extractor(images)
        return {"features": features, "logits": self.classifier(features)}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.feature_extractor.parameters()), "head": list(self.classifier.parameters())}


def manifest(names, num_classes=NUM_CLASSES, **overrides) -> dict:
    settings = {
        "num_classes": num_classes,
        "class_names": list(CITYSCAPES_19.class_names[:num_classes]),
        "palette": [list(c) for c in CITYSCAPES_19.palette[:num_classes]],
        "dataset": "cityscapes",
        "split": "train",
        "root": "/data/cityscapes",
        "names": list(names),
        "checkpoint": {"path": "cda.pth", "sha256": "0" * 64},
        "input_size": None,
        "flip": False,
        "threshold": 0.01,
        "rare_share": 0.01,
        "rare_factor": 0.5,
    }
    settings.update(overrides)
    return settings


def write_store(
    path: Path, names, *, size=(8, 16), labels=None, entropies=None, seed=0, num_classes=NUM_CLASSES, **overrides
) -> Path:
    """A finished store; ``labels``/``entropies`` map a name to its maps, others are random.

    Random labels put class ``num_classes - 1`` on one pixel of each image only, so that class
    is rare (far below 1% once a big image is in the store; see ``rare_store``).
    """
    rng = np.random.default_rng(seed)
    writer = PseudoLabelWriter(path, manifest(names, num_classes, **overrides))
    for name in names:
        label = rng.integers(0, num_classes - 1, size=size).astype(np.uint8)
        label[0, 0] = num_classes - 1
        entropy = rng.uniform(0, 1.0 / num_classes, size=size).astype(np.float32)
        if labels is not None and name in labels:
            label = labels[name]
        if entropies is not None and name in entropies:
            entropy = entropies[name]
        writer.write(name, label, entropy)
    writer.finish()
    return path


def rare_store(path: Path) -> Path:
    """A store of one 64×64 image in which class 3 has 1 pixel (rare) and classes 0-2 are common."""
    return write_store(path, ["big"], size=(64, 64))


def step_context(optimizers, iteration: int = 0) -> StepContext:
    device = torch.device("cpu")
    return StepContext(
        iteration=iteration, device=device, optimizers=optimizers, scaler=build_grad_scaler(device, "none")
    )


def target_batch(num_images=2, size=(8, 12), *, seed=0, num_classes=NUM_CLASSES, dtype=torch.float32) -> dict:
    """A target batch: images, pseudo labels and entropies with padding (label 255, entropy -1)
    in the last column, entropies around the thresholds of common (0.01) and rare (0.02) classes."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    pseudo_mask = torch.randint(0, num_classes, (num_images, height, width), generator=generator)
    entropy = torch.rand(num_images, height, width, generator=generator, dtype=dtype) * 0.03
    pseudo_mask[..., -1] = 255
    entropy[..., -1] = -1.0
    return {
        "image": torch.randn(num_images, 3, height, width, generator=generator, dtype=dtype),
        "pseudo_mask": pseudo_mask,
        "entropy": entropy,
        "name": [f"img{i}" for i in range(num_images)],
        "index": torch.arange(num_images),
    }
