"""IAST's instance-adaptive selector: per-class confidence thresholds carried from batch to batch.

*Instance Adaptive Self-Training for Unsupervised Domain Adaptation*, Mei et al., ECCV 2020,
arXiv:2008.12197. Semantics follow the official code; docs/iast.md lists every constant, where it
comes from and where the code and the paper's text differ. The selector is IAST's per-run state
(``--resume`` must restore its thresholds); the losses are in ``methods/iast_losses.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from crossregion.data.labels import IGNORE_INDEX

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


def proportion_for_round(round_index: int) -> float:
    """α of the official self-training round ``round_index`` (1-based); later rounds keep the last.

    Raises:
        ValueError: ``round_index`` < 1.
    """
    if round_index < 1:
        raise ValueError(f"self-training rounds count from 1, got {round_index}")
    return ROUND_PROPORTIONS[min(round_index, len(ROUND_PROPORTIONS)) - 1]
