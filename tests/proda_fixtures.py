"""Deterministic weights and input for the ProDA checkpoint parity test.

``tests/data/proda_reference.json`` holds the key names and shapes of ProDA's official model
(ResNet101 + Classifier_Module2, 19 classes) and the logits/features that official model computed
with the weights ``deterministic_state`` gives on ``reference_input()``. The weights are rebuilt
here from the key list, so no 170 MB checkpoint has to be stored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

REFERENCE_FILE = Path(__file__).parent / "data" / "proda_reference.json"
# 64 (not 65): the stem's ceil-mode max pool gives 17 rows where a floor pool gives 16.
REFERENCE_INPUT_SHAPE = (1, 3, 64, 64)
REFERENCE_INPUT_SEED = 12345


def load_reference() -> dict[str, Any]:
    return json.loads(REFERENCE_FILE.read_text())


def deterministic_state(keys_and_shapes: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Weights filled from ``torch.Generator().manual_seed(i)`` for the i-th key, in list order.

    Scales keep a 101-layer network in eval mode finite and its outputs varied: conv/linear
    weights N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), biases and running means N(0, 0.1^2),
    running variances U(0.5, 1.5), step counters 0.
    """
    state = {}
    for index, (key, shape) in enumerate(keys_and_shapes):
        generator = torch.Generator().manual_seed(index)
        size = tuple(shape)
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(0, dtype=torch.long)
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(size, generator=generator)
        elif key.endswith("weight") and len(size) >= 2:
            fan_in = math.prod(size[1:])
            value = torch.randn(size, generator=generator) / math.sqrt(fan_in)
        elif key.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(size, generator=generator)
        else:  # biases and running means
            value = 0.1 * torch.randn(size, generator=generator)
        state[key] = value
    return state


def reference_input() -> torch.Tensor:
    """The fixed (1, 3, 64, 64) image the recorded outputs belong to."""
    generator = torch.Generator().manual_seed(REFERENCE_INPUT_SEED)
    return torch.randn(REFERENCE_INPUT_SHAPE, generator=generator)


def summarize(logits: torch.Tensor, features: torch.Tensor) -> dict[str, Any]:
    """The numbers the parity test compares: per-channel means/stds and two slices.

    Shape:
        - logits: (1, K, h, w); features: (1, 256, h, w)
    """
    row = logits.shape[2] // 2
    centre = (features.shape[2] // 2, features.shape[3] // 2)
    return {
        "logits_shape": list(logits.shape),
        "features_shape": list(features.shape),
        "logits_channel_mean": logits.mean(dim=(0, 2, 3)).tolist(),
        "logits_channel_std": logits.std(dim=(0, 2, 3)).tolist(),
        "logits_middle_row": logits[0, :, row, :].tolist(),
        "features_channel_mean": features.mean(dim=(0, 2, 3)).tolist(),
        "features_centre_pixel": features[0, :, centre[0], centre[1]].tolist(),
    }
