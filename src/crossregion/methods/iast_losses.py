"""IAST's losses: the region-guided regularisation of a self-training round and its weights.

*Instance Adaptive Self-Training for Unsupervised Domain Adaptation*, Mei et al., ECCV 2020,
arXiv:2008.12197. Semantics follow the official code; docs/iast.md lists every constant, where it
comes from and where the code and the paper's text differ. Tensor functions without state; the
selector that makes the pseudo labels is ``methods/iast_selector.py``, the warm-up's
least-squares GAN loss ``domain_mse`` is in ``methods/adaptsegnet.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from crossregion.data.labels import IGNORE_INDEX
from crossregion.methods.losses import resize_aligned

# --- Region-guided regularisation (self-training rounds) ---------------------------------------

# λ of the entropy term on ignored (non-pseudo-labelled) pixels; official sl_*.yaml
# (MODEL.DISCRIMINATOR.LAMBDA_ENTROPY_WEIGHT).
ENTROPY_REGULARISATION_WEIGHT = 3.0
# λ of the KL-to-uniform term on pseudo-labelled pixels; official sl_*.yaml
# (MODEL.DISCRIMINATOR.LAMBDA_KLDREG_WEIGHT).
KLD_REGULARISATION_WEIGHT = 0.1

# --- Warm-up adversarial stage ------------------------------------------------------------------

# The least-squares GAN of the output-space discriminator uses the shared domain labels
# (methods/losses.py): D learns source → 0, target → 1; the segmenter wants target maps scored 0
# (official UDASegmentor).
# λ_adv of the target adversarial term (official warmup_at.yaml).
WARMUP_ADVERSARIAL_WEIGHTS: Mapping[str, float] = {"gta5": 0.05, "synthia": 0.001}


def _region_weighting(
    logits: torch.Tensor, pseudo_label: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the label size, the labelled (pseudo-labelled) mask and the ignored mask."""
    if pseudo_label.ndim != 3 or pseudo_label.shape[0] != logits.shape[0]:
        raise ValueError(f"pseudo_label must be (N, H, W) with N={logits.shape[0]}, got {tuple(pseudo_label.shape)}")
    upsampled = resize_aligned(logits, tuple(pseudo_label.shape[-2:])).float()
    ignored = pseudo_label == ignore_index
    return upsampled, ~ignored, ignored


def _official_region_mean(pixel_values: torch.Tensor, mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Σ over ``mask`` pixels divided by K × (number of mask pixels), as the code normalises.

    The code divides by the non-zero entries of a weight map broadcast over the K classes, hence
    the extra K. An empty region gives 0 here; the code divides 0 by 0 (NaN).
    """
    count = mask.sum() * num_classes
    total = (pixel_values * mask).sum()
    return total / count.clamp(min=1)


def kld_regularisation(
    logits: torch.Tensor, pseudo_label: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Smoothing term on pseudo-labelled pixels: −(1/K) Σ_c log p_c, official normalisation.

    Per pixel this is KL(uniform ‖ p) + log K (the code drops the constant, which has no
    gradient). The sum over pseudo-labelled pixels is divided by K × their number (code), so the
    value is (mean KL + log K) / K. Unweighted: multiply by ``KLD_REGULARISATION_WEIGHT``.

    Shape:
        - logits: (N, K, h, w), any resolution; upsampled (align_corners=True) to the labels
        - pseudo_label: (N, H, W), ``ignore_index`` = not pseudo-labelled
        - output: scalar, float32
    """
    upsampled, labelled, _ = _region_weighting(logits, pseudo_label, ignore_index)
    num_classes = upsampled.shape[1]
    pixel_values = -F.log_softmax(upsampled, dim=1).sum(dim=1) / num_classes
    return _official_region_mean(pixel_values, labelled, num_classes)


def entropy_regularisation(
    logits: torch.Tensor, pseudo_label: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Sharpening term on ignored pixels: the Shannon entropy −Σ_c p_c log p_c (nats).

    Summed over the pixels the selector ignored and divided by K × their number (code), so the
    value is the mean entropy / K. Unweighted: multiply by ``ENTROPY_REGULARISATION_WEIGHT``.

    Shape:
        - logits: (N, K, h, w), any resolution; upsampled (align_corners=True) to the labels
        - pseudo_label: (N, H, W), ``ignore_index`` = not pseudo-labelled
        - output: scalar, float32
    """
    upsampled, _, ignored = _region_weighting(logits, pseudo_label, ignore_index)
    log_probs = F.log_softmax(upsampled, dim=1)
    pixel_values = -(log_probs.exp() * log_probs).sum(dim=1)
    return _official_region_mean(pixel_values, ignored, upsampled.shape[1])


def region_guided_regularisation(
    logits: torch.Tensor,
    pseudo_label: torch.Tensor,
    *,
    kld_weight: float = KLD_REGULARISATION_WEIGHT,
    entropy_weight: float = ENTROPY_REGULARISATION_WEIGHT,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """Both weighted terms, keyed as the code logs them (``kld_reg_loss``, ``entropy_reg_loss``).

    Shape:
        - logits: (N, K, h, w)
        - pseudo_label: (N, H, W)
        - outputs: scalars
    """
    return {
        "kld_reg_loss": kld_weight * kld_regularisation(logits, pseudo_label, ignore_index),
        "entropy_reg_loss": entropy_weight * entropy_regularisation(logits, pseudo_label, ignore_index),
    }
