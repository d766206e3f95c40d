"""Pure pieces of IAST: the instance-adaptive pseudo-label selector and its losses.

*Instance Adaptive Self-Training for Unsupervised Domain Adaptation*, Mei et al., ECCV 2020,
arXiv:2008.12197. Semantics follow the official code; docs/iast.md lists every constant, where it
comes from and where the code and the paper's text differ. The selector is the one stateful object
here (its class thresholds are carried from batch to batch, so ``--resume`` must restore them);
everything else is a tensor function without state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from crossregion.data.labels import IGNORE_INDEX

# The warm-up's least-squares GAN loss, shared with ProDA's warm-up: D learns the average of
# domain_mse(D(source), SOURCE_DOMAIN) and domain_mse(D(target), TARGET_DOMAIN); the
# segmenter's adversarial term is λ_adv · domain_mse(D(target), SOURCE_DOMAIN).
from crossregion.methods.adaptsegnet import domain_mse
from crossregion.methods.losses import upsample_logits

# --- Instance-adaptive selector (pseudo-label generation at the start of each round) ---------

# Every class threshold starts here at the start of each round's label generation (code; the
# paper does not give the initial value).
INITIAL_CLASS_THRESHOLD = 0.9
# β, the momentum of the class thresholds: θ ← β θ + (1 − β) θ_batch. Code default; no official
# config overrides it.
THRESHOLD_MOMENTUM = 0.9
# γ, the decay that shrinks the selected proportion of classes whose threshold is low
# (α θ^γ). All official self-training configs use 8; the code's default is 1.
THRESHOLD_DECAY = 8.0
# α, the proportion of a class's pixels kept (before the decay), per self-training round: the
# official configs raise it by 0.05 a round (sl_1/sl_2/sl_3, GTA5 and SYNTHIA alike).
ROUND_PROPORTIONS: tuple[float, ...] = (0.2, 0.25, 0.3)
SELECTION_PROPORTION = ROUND_PROPORTIONS[0]
# A threshold that reaches 1 could select nothing; the code puts it back to 0.999.
THRESHOLD_CAP = 0.999

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


class InstanceAdaptiveSelector:
    """Per-class confidence thresholds that adapt to each batch, with momentum (IAS).

    For each call with a batch of softmax maps: for every class c, the batch threshold is the
    ``1 − α θ_c^γ`` quantile (linear interpolation) of the max-probabilities of the pixels
    predicted c, together with the current θ_c itself (the code appends it, so a class absent
    from the batch keeps its threshold). Then ``θ_c ← β θ_c + (1 − β) θ_batch``, and any θ ≥ 1
    becomes ``cap``. Pixels whose max-probability is below the (updated) threshold of their class
    are ignored.

    Official numerics are kept: confidences are rounded to float16 before the quantile and the
    batch thresholds to float32, the carried thresholds are float64. The code updates once per
    pseudo-label batch of 2 images (``PSEUDO_BATCH_SIZE``), not per image; call ``select`` with
    such batches to match it. Under DDP every rank carries its own thresholds over its own shard.

    Args:
        num_classes: K.
        proportion: α, the base proportion of each class's pixels kept.
        decay: γ.
        momentum: β.
        initial_threshold: θ of every class before the first batch.
        cap: the value a threshold ≥ 1 is reset to.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        proportion: float = SELECTION_PROPORTION,
        decay: float = THRESHOLD_DECAY,
        momentum: float = THRESHOLD_MOMENTUM,
        initial_threshold: float = INITIAL_CLASS_THRESHOLD,
        cap: float = THRESHOLD_CAP,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 < proportion <= 1.0:
            raise ValueError(f"IAST proportion α must be in (0, 1], got {proportion}")
        if decay < 0.0:
            raise ValueError(f"IAST decay γ must be >= 0, got {decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"IAST threshold momentum β must be in [0, 1), got {momentum}")
        if not 0.0 < initial_threshold < 1.0 or not 0.0 < cap < 1.0:
            raise ValueError(f"IAST initial threshold ({initial_threshold}) and cap ({cap}) must be in (0, 1)")
        self.num_classes = num_classes
        self.proportion = proportion
        self.decay = decay
        self.momentum = momentum
        self.initial_threshold = initial_threshold
        self.cap = cap
        self.thresholds = torch.full((num_classes,), initial_threshold, dtype=torch.float64)
        self.num_updates = 0

    def update(self, probs: torch.Tensor) -> torch.Tensor:
        """Moves the thresholds with one batch; returns the new thresholds (float64, on the batch's device).

        Shape:
            - probs: (N, K, H, W) softmax probabilities
            - output: (K,)
        """
        _check_probs(probs, self.num_classes)
        confidence, predicted = probs.detach().max(dim=1)
        # The code stores confidences as float16 before taking quantiles.
        confidence = confidence.half().double().flatten()
        predicted = predicted.flatten()
        previous = self.thresholds.to(confidence.device)
        batch_thresholds = torch.empty_like(previous)
        for class_index in range(self.num_classes):
            samples = torch.cat([previous[class_index : class_index + 1], confidence[predicted == class_index]])
            kept_share = self.proportion * previous[class_index] ** self.decay
            batch_thresholds[class_index] = _linear_quantile(samples, 1.0 - kept_share)
        # The code's batch thresholds live in a float32 array, so their momentum term is a
        # float32 product; the carried thresholds stay float64.
        batch_term = (1.0 - self.momentum) * batch_thresholds.float()
        thresholds = self.momentum * previous + batch_term.double()
        thresholds = torch.where(thresholds >= 1.0, torch.full_like(thresholds, self.cap), thresholds)
        # Kept on the batch's device: the next step needs them there, and a copy to the host would
        # wait for the GPU every iteration. state_dict() copies them to the host.
        self.thresholds = thresholds
        self.num_updates += 1
        return self.thresholds.clone()

    def select(self, probs: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """Updates the thresholds with this batch, then labels it with the updated thresholds.

        Shape:
            - probs: (N, K, H, W) softmax probabilities
            - output: (N, H, W) int64 train IDs, ``ignore_index`` where not confident enough
        """
        self.update(probs)
        return threshold_pseudo_labels(probs, self.thresholds, ignore_index=ignore_index)

    def reset(self) -> None:
        """Back to ``initial_threshold`` for every class, as at the start of each official round."""
        self.thresholds = torch.full((self.num_classes,), self.initial_threshold, dtype=torch.float64)
        self.num_updates = 0

    def state_dict(self) -> dict[str, Any]:
        """The thresholds and the hyper-parameters they were computed with."""
        return {
            "thresholds": self.thresholds.cpu().clone(),
            "num_updates": self.num_updates,
            "num_classes": self.num_classes,
            "proportion": self.proportion,
            "decay": self.decay,
            "momentum": self.momentum,
            "initial_threshold": self.initial_threshold,
            "cap": self.cap,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores the thresholds exactly.

        Raises:
            ValueError: the state belongs to a selector with other hyper-parameters or class count;
                resuming it would silently change the pseudo labels.
        """
        for key in ("num_classes", "proportion", "decay", "momentum", "initial_threshold", "cap"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"IAST selector state has {key}={state.get(key)!r}, this run uses "
                    f"{getattr(self, key)!r}; resume with the settings the state was saved with"
                )
        thresholds = torch.as_tensor(state["thresholds"], dtype=torch.float64).cpu()
        if thresholds.shape != (self.num_classes,):
            raise ValueError(
                f"IAST selector state holds {tuple(thresholds.shape)} thresholds, expected ({self.num_classes},)"
            )
        self.thresholds = thresholds.clone()
        self.num_updates = int(state["num_updates"])


def _check_probs(probs: torch.Tensor, num_classes: int) -> None:
    if probs.ndim != 4 or probs.shape[1] != num_classes:
        raise ValueError(f"expected softmax maps of shape (N, {num_classes}, H, W), got {tuple(probs.shape)}")


def _linear_quantile(sample: torch.Tensor, quantile: torch.Tensor | float) -> torch.Tensor:
    """The ``quantile`` of a 1-D sample with linear interpolation between order statistics.

    The definition of numpy's default ``percentile`` and of ``torch.quantile``, written out
    because ``torch.quantile`` refuses samples above 2^24 elements (one class of a full-size batch
    can exceed that).
    """
    values = torch.sort(sample).values
    position = torch.as_tensor(quantile, dtype=values.dtype, device=values.device).clamp(0.0, 1.0) * (
        values.numel() - 1
    )
    lower = position.floor().long()
    upper = torch.clamp(lower + 1, max=values.numel() - 1)
    fraction = position - lower.to(values.dtype)
    return values[lower] + (values[upper] - values[lower]) * fraction


def threshold_pseudo_labels(
    probs: torch.Tensor, thresholds: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Hard pseudo labels: argmax where its probability reaches its class threshold, else ignore.

    A tie (probability equal to the threshold) is kept, as in the code (it ignores p < θ).

    Shape:
        - probs: (N, K, H, W) softmax probabilities
        - thresholds: (K,)
        - output: (N, H, W) int64
    """
    confidence, predicted = probs.detach().max(dim=1)
    pixel_thresholds = thresholds.to(device=probs.device, dtype=torch.float64)[predicted]
    ignored = confidence.double() < pixel_thresholds
    return predicted.masked_fill(ignored, ignore_index)


def _region_weighting(
    logits: torch.Tensor, pseudo_label: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the label size, the labelled (pseudo-labelled) mask and the ignored mask."""
    if pseudo_label.ndim != 3 or pseudo_label.shape[0] != logits.shape[0]:
        raise ValueError(f"pseudo_label must be (N, H, W) with N={logits.shape[0]}, got {tuple(pseudo_label.shape)}")
    upsampled = upsample_logits(logits, tuple(pseudo_label.shape[-2:])).float()
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


def proportion_for_round(round_index: int) -> float:
    """α of the official self-training round ``round_index`` (1-based); later rounds keep the last.

    Raises:
        ValueError: ``round_index`` < 1.
    """
    if round_index < 1:
        raise ValueError(f"self-training rounds count from 1, got {round_index}")
    return ROUND_PROPORTIONS[min(round_index, len(ROUND_PROPORTIONS)) - 1]


__all__ = [
    "ENTROPY_REGULARISATION_WEIGHT",
    "INITIAL_CLASS_THRESHOLD",
    "KLD_REGULARISATION_WEIGHT",
    "ROUND_PROPORTIONS",
    "SELECTION_PROPORTION",
    "THRESHOLD_CAP",
    "THRESHOLD_DECAY",
    "THRESHOLD_MOMENTUM",
    "WARMUP_ADVERSARIAL_WEIGHTS",
    "InstanceAdaptiveSelector",
    "domain_mse",
    "entropy_regularisation",
    "kld_regularisation",
    "proportion_for_round",
    "region_guided_regularisation",
    "threshold_pseudo_labels",
]
