"""Loss functions shared by the methods: pure tensor functions, no state, no host syncs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossregion.data.labels import IGNORE_INDEX

# The two domain labels of every discriminator: source 0, target 1. The output-space
# discriminators (AdaptSegNet, ADVENT, IAST's and ProDA's warm-ups) take them as BCE or LS-GAN
# targets, and the generator wants target maps scored as source; the fine-grained discriminators
# (FADA, CRA) index the halves of their 2K channels with them, CRA's trusted pixels playing source.
SOURCE_DOMAIN = 0
TARGET_DOMAIN = 1


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling with ``align_corners=True``, as the official FADA/CRA/ADVENT code.

    Shape:
        - logits: (N, C, h, w)
        - output: (N, C, H, W) with (H, W) = ``size``
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def segmentation_cross_entropy(
    logits: torch.Tensor, mask: torch.Tensor, *, temperature: float = 1.0, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy of logits upsampled to the label size, mean over non-ignored pixels.

    ``temperature`` divides the upsampled logits first: FADA's CDA stage uses T = 1.8 on the
    source CE too (docs/spec.md §2.3); source-only training uses 1 (docs/spec.md §2.4). A batch without any
    labelled pixel gives NaN, which the trainer reports.

    Shape:
        - logits: (N, K, h, w), any resolution (stride 8 from the segmenter)
        - mask: (N, H, W) int64 train IDs, ``ignore_index`` = not scored
        - output: scalar
    """
    upsampled = upsample_logits(logits, tuple(mask.shape[-2:]))
    if temperature != 1.0:
        upsampled = upsampled / temperature
    return F.cross_entropy(upsampled.float(), mask, ignore_index=ignore_index)
