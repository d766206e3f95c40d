"""ProDA's class prototypes (Zhang et al., CVPR 2021): per-run state of stage 1.

Semantics follow ProDA's official code (``models/adaptation_modelv2.py``, ``calc_prototype.py``,
``parser_train.py``); docs/proda.md lists every constant. ``Prototypes`` holds the class
centroids and their update counts as buffers, so checkpoints restore them; the distances and
weights computed from them are in ``methods/proda_losses.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from crossregion.methods.proda_losses import prototype_distances

# Prototype EMA: p <- (1 - m) p + m v, with m = proto_momentum = 1e-4 (paper: lambda = 0.9999,
# the weight of the old prototype).
PROTO_MOMENTUM = 1e-4
# Prototype means skip an (image, class) with fewer than 10 pixels of that class.
MIN_CLASS_PIXELS = 10
# Update counters stop at 3000: past that, the "mean" update is an EMA with weight 1/3001.
PROTO_COUNT_CAP = 3000
# Prototype feature width (Classifier_Module2's bottleneck).
PROTO_FEATURE_CHANNELS = 256


def class_mean_features(
    features: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    min_pixels: int = MIN_CLASS_PIXELS,
) -> list[tuple[int, int, torch.Tensor]]:
    """Per image and per class, the mean feature of the pixels the model predicts as that class.

    A pixel belongs to class k when ``argmax(logits) == k`` (and ``labels == k`` when labels are
    given, as for source prototypes). (Image, class) pairs with fewer than ``min_pixels`` such
    pixels are skipped. Order: images first, then classes, as the official loop.

    Returns:
        ``(image index, class, mean feature (C,))`` triples.

    Shape:
        - features: (N, C, H, W)
        - logits: (N, K, H, W), same H, W
        - labels: (N, H, W) or None
    """
    num_classes = logits.shape[1]
    predicted = logits.argmax(dim=1)
    if labels is not None:
        predicted = torch.where(labels == predicted, predicted, torch.full_like(predicted, -1))
    members = F.one_hot(predicted + 1, num_classes + 1)[..., 1:]  # (N, H, W, K); -1 -> none
    counts = members.sum(dim=(1, 2))  # (N, K)
    sums = torch.einsum("nchw,nhwk->nkc", features, members.to(features.dtype))
    found = []
    for image, class_id in (counts >= min_pixels).nonzero().tolist():
        found.append((image, class_id, sums[image, class_id] / counts[image, class_id]))
    return found


class Prototypes(nn.Module):
    """ProDA's class prototypes (``objective_vectors``) and update counts, as buffers.

    Being buffers, they follow ``.to(device)`` and travel in ``state_dict()``, so a method that
    keeps this module as per-run state resumes it exactly.

    Args:
        num_classes: K.
        channels: C, the prototype feature width.

    Shape:
        - vectors: (K, C); counts: (K,) (float, as the official counter)
    """

    def __init__(self, num_classes: int, channels: int = PROTO_FEATURE_CHANNELS) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.channels = channels
        self.register_buffer("vectors", torch.zeros(num_classes, channels))
        self.register_buffer("counts", torch.zeros(num_classes))

    def _add(self, class_id: int, vector: torch.Tensor, rule: str, momentum: float) -> None:
        # The official update ignores a vector summing to exactly 0 (an empty class).
        if float(vector.sum()) == 0.0:
            return
        vector = vector.to(self.vectors.dtype)
        if rule == "mean":
            count = self.counts[class_id]
            self.vectors[class_id] = (self.vectors[class_id] * count + vector) / (count + 1)
        else:
            self.vectors[class_id] = self.vectors[class_id] * (1 - momentum) + momentum * vector
        self.counts[class_id] = torch.clamp(self.counts[class_id] + 1, max=PROTO_COUNT_CAP)

    @torch.no_grad()
    def update_moving_average(
        self,
        features: torch.Tensor,
        logits: torch.Tensor,
        *,
        momentum: float = PROTO_MOMENTUM,
    ) -> None:
        """Stage-1 update (``--moving_prototype``): for each image, then each predicted class,
        ``p_k <- (1 - momentum) p_k + momentum * mean feature``.

        One EMA step per (image, class) pair, in order, as the official code does: a class seen
        in all four images of a batch moves four times. ProDA passes the EMA model's features and
        logits on the full target image (at 1/4 input resolution), with no label.

        Shape:
            - features: (N, C, H, W); logits: (N, K, H, W)
        """
        for _, class_id, vector in class_mean_features(features.detach(), logits.detach()):
            self._add(class_id, vector, "moving_average", momentum)

    @torch.no_grad()
    def update_mean(
        self,
        features: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Running-mean update of ``calc_prototype.py`` (initial prototypes).

        Each (image, class) mean feature enters a running mean per class; the counter stops at
        ``PROTO_COUNT_CAP``, after which the update is an EMA with weight 1 / (cap + 1).

        Shape:
            - features: (N, C, H, W); logits: (N, K, H, W); labels: (N, H, W) or None
        """
        found = class_mean_features(features.detach(), logits.detach(), labels)
        for _, class_id, vector in found:
            self._add(class_id, vector, "mean", 0.0)

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``prototype_distances(features, self.vectors)``: (N, C, H, W) -> (N, K, H, W)."""
        return prototype_distances(features, self.vectors)

    def extra_repr(self) -> str:
        return f"{self.num_classes}, channels={self.channels}"


@torch.no_grad()
def initial_prototypes(
    model: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    batches: Iterable[torch.Tensor],
    *,
    num_classes: int,
    channels: int = PROTO_FEATURE_CHANNELS,
) -> Prototypes:
    """Target prototypes from a model's own predictions, as ProDA's ``calc_prototype.py``.

    For each batch of target images: the model's ``features`` and ``logits`` (at the model's
    output stride, not upsampled) feed ``Prototypes.update_mean`` with no labels. A module
    ``model`` is put in eval mode for the pass and restored after. The official script runs four
    epochs over the un-augmented, unshuffled target training set; pass the batches accordingly.

    Args:
        model: returns ``{"features", "logits"}`` for (N, 3, H, W) images (a ``Segmenter`` with
            ``head="proda"``).
        batches: image tensors, already on the model's device.
        num_classes: K.
        channels: the feature width.

    Returns:
        ``Prototypes`` on the device of the first features.
    """
    prototypes = Prototypes(num_classes, channels)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        for images in batches:
            outputs = model(images)
            prototypes = prototypes.to(outputs["features"].device)
            prototypes.update_mean(outputs["features"], outputs["logits"])
    finally:
        if was_training:
            model.train()
    return prototypes
