"""The fine-grained adversarial terms that FADA and CRA share: soft domain labels and their CE.

Semantics follow the official code (docs/cra.md lists the constants and the differences);
where the paper's text differs, the docstring says so. Tensor functions without state; the
entropy / trust rule lives in ``crossregion.trust``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossregion.methods.losses import SOURCE_DOMAIN, TARGET_DOMAIN


def soft_domain_labels(logits: torch.Tensor, temperature: float = 1.8, clip: float = 0.9) -> torch.Tensor:
    """The class part ``a`` of the domain labels: ``min(softmax(z / T), clip)``, detached.

    Not renormalised after clipping, as in the official code: a confident 0.99 becomes 0.9 and
    the vector sums to less than 1. Detached because these are targets: D's loss must not push
    gradients into the segmenter through them.

    Args:
        logits: segmentation logits (already upsampled to the mask resolution).
        temperature: T (1.8 in the official code).
        clip: upper bound of each entry (0.9 in the official code).

    Shape:
        - logits: (N, K, H, W)
        - output: (N, K, H, W)
    """
    return F.softmax(logits.detach() / temperature, dim=1).clamp(max=clip)


def domain_targets(soft_labels: torch.Tensor, domain: int) -> torch.Tensor:
    """Soft targets of the fine-grained discriminator: ``[a; 0]`` for the source domain, ``[0; a]`` for the target.

    Args:
        soft_labels: ``a`` from ``soft_domain_labels``.
        domain: ``SOURCE_DOMAIN`` (trusted) or ``TARGET_DOMAIN`` (untrusted).

    Shape:
        - soft_labels: (N, K, H, W)
        - output: (N, 2K, H, W)
    """
    zeros = torch.zeros_like(soft_labels)
    if domain == SOURCE_DOMAIN:
        return torch.cat([soft_labels, zeros], dim=1)
    if domain == TARGET_DOMAIN:
        return torch.cat([zeros, soft_labels], dim=1)
    raise ValueError(f"domain must be SOURCE_DOMAIN ({SOURCE_DOMAIN}) or TARGET_DOMAIN ({TARGET_DOMAIN}), got {domain}")


def discriminator_region_accuracy(
    disc_logits: torch.Tensor, trusted: torch.Tensor, untrusted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """How well the fine-grained D tells the regions apart: the share of trusted pixels it calls
    trusted (probability mass on channels [0, K) above 1/2) and of untrusted pixels it calls
    untrusted. 0.5/0.5 is a D that cannot separate them; an empty region gives 0.

    Shape:
        - disc_logits: (N, 2K, H, W)
        - trusted, untrusted: (N, H, W) bool
        - outputs: scalars
    """
    num_classes = disc_logits.shape[1] // 2
    says_trusted = F.softmax(disc_logits.float(), dim=1)[:, :num_classes].sum(dim=1) > 0.5

    def share(hits: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return (hits & region).sum() / region.sum().clamp(min=1)

    return share(says_trusted, trusted), share(~says_trusted, untrusted)


def soft_label_cross_entropy(
    disc_logits: torch.Tensor,
    soft_targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    normalize: str = "all",
) -> torch.Tensor:
    """Cross-entropy against soft targets: per pixel ``-Σ_j t_j log_softmax(d)_j`` (docs/spec.md §2.2).

    Args:
        disc_logits: discriminator logits at the targets' resolution.
        soft_targets: per-pixel target weights, need not sum to 1.
        mask: pixels that count; None = all.
        normalize: ``"all"`` divides the masked sum by all N·H·W pixels (the official
            FADA/CRA code); ``"mask"`` divides by the number of masked pixels (at least 1, so
            an empty mask gives 0, not NaN).

    Returns:
        A scalar loss in ``disc_logits``' dtype.

    Shape:
        - disc_logits: (N, C, H, W)
        - soft_targets: (N, C, H, W)
        - mask: (N, H, W), bool
    """
    if disc_logits.shape != soft_targets.shape:
        raise ValueError(
            f"disc_logits {tuple(disc_logits.shape)} and soft_targets {tuple(soft_targets.shape)} differ in shape"
        )
    pixel_losses = -(soft_targets * F.log_softmax(disc_logits, dim=1)).sum(dim=1)
    if mask is not None:
        if mask.shape != pixel_losses.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match the logits' N×H×W {tuple(pixel_losses.shape)}")
        pixel_losses = pixel_losses * mask
    if normalize == "all":
        return pixel_losses.sum() / pixel_losses.numel()
    if normalize == "mask":
        count = pixel_losses.numel() if mask is None else mask.sum().clamp(min=1)
        return pixel_losses.sum() / count
    raise ValueError(f"normalize must be 'all' or 'mask', got {normalize!r}")
