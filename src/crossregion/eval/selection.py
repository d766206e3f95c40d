"""Label-free model selection: scores that rank segmenters without target labels.

Each criterion is a small function of per-pixel quantities; ``score_segmenter`` gathers them for
one model on sampled pixels of unlabelled target images (and, for ``dev``, of labelled source
images) and applies the criteria asked for. Pixels are drawn per image from a generator seeded
by the image's index, so every candidate is scored on the same pixels.

A model's logits are read at a sampled pixel by bilinear interpolation with the corners aligned
(``grid_sample``), which equals upsampling the whole map the way ``predict_probs`` does and then
taking that pixel, without building full-resolution maps.

Direction: ``CRITERIA[name].higher_is_better``; ``crossregion select`` ranks best first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crossregion.data.labels import IGNORE_INDEX
from crossregion.trust import normalized_entropy, rare_class_factors, region_masks, scaled_entropy

# SND's temperature (Saito et al. use 0.05) and the most pixels its P×P similarity matrix holds.
SND_TEMPERATURE = 0.05
SND_MAX_PIXELS = 2048
# The rescaled views of the agreement criterion (with the flipped one); FADA/CRA's test-time scales.
AGREEMENT_SCALES = (0.75, 1.25)
# Feature vectors per image for DEV's domain classifier: the first of the sampled pixels, which
# bounds the memory (2048 channels for ResNet-101).
DEV_PIXELS_PER_IMAGE = 64
# L2 penalty of DEV's logistic-regression domain classifier, on standardised features.
DEV_L2 = 1e-3


# ------------------------------------------------------------------------------------ criteria
def mean_normalized_entropy(probs: torch.Tensor) -> float:
    """Mean prediction entropy divided by ln K, in [0, 1]; lower is better.

    The entropy of target predictions as a validation score: Morerio, Cavazza and Murino,
    "Minimal-Entropy Correlation Alignment for Unsupervised Deep Domain Adaptation", ICLR 2018.

    Shape:
        probs: (P, K), each row a distribution over the K classes.
    """
    return float(_entropy(probs).mean() / math.log(probs.shape[1]))


def information_maximization(probs: torch.Tensor) -> float:
    """Entropy of the mean prediction minus the mean entropy, divided by ln K; higher is better.

    Confident pixels (low mean entropy) whose classes are spread over the label set (high entropy
    of the class marginal) score high; a model that predicts one class everywhere scores 0. The
    objective of Gomes, Krause and Perona, "Discriminative Clustering by Regularized Information
    Maximization", NeurIPS 2010.

    Shape:
        probs: (P, K).
    """
    marginal = probs.mean(dim=0, keepdim=True)
    return float((_entropy(marginal)[0] - _entropy(probs).mean()) / math.log(probs.shape[1]))


def soft_neighborhood_density(vectors: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density; higher is better (denser neighbourhoods).

    Saito, Kim, Teterwak, Sclaroff, Darrell and Saenko, "Tune it the Right Way: Unsupervised
    Validation of Domain Adaptation via Soft Neighborhood Density", ICCV 2021: the cosine
    similarities of each sample to all others, a softmax at ``temperature``, its entropy,
    averaged over samples. The paper computes it on the softmax outputs, as ``crossregion
    select`` does on sampled pixels.

    Shape:
        vectors: (P, D), P ≥ 2.
    """
    if vectors.shape[0] < 2:
        raise ValueError(f"soft neighbourhood density needs at least 2 samples, got {vectors.shape[0]}")
    unit = F.normalize(vectors.double(), dim=1)
    similarity = unit @ unit.T / temperature
    # A sample is not its own neighbour.
    similarity.fill_diagonal_(-math.inf)
    return float(_entropy(similarity.softmax(dim=1)).mean())


def view_agreement(prediction: torch.Tensor, view_predictions: torch.Tensor) -> float:
    """Share of pixels whose class stays the same in another view, averaged over the views; higher
    is better.

    Consistency under input transformations as a signal without labels, as in Xie, Dai, Hovy,
    Luong and Le, "Unsupervised Data Augmentation for Consistency Training", NeurIPS 2020; here
    the views are the horizontal flip and the rescalings of FADA/CRA's test-time augmentation.

    Shape:
        prediction: (P,) class indices; view_predictions: (V, P), mapped back to the same pixels.
    """
    return float((view_predictions == prediction[None]).double().mean())


def trusted_fraction(probs: torch.Tensor, threshold: float, rare_share: float, rare_factor: float) -> float:
    """Share of pixels CRA's rule trusts at λ = ``threshold``; higher is better.

    Wang et al., "Cross-Region Domain Adaptation for Class-level Alignment", arXiv 2109.06422
    (the rule is in ``crossregion.trust``): normalised entropy times the rare-class factor of the
    predicted class, rare classes decided by this model's own predictions on these pixels.

    Shape:
        probs: (P, K).
    """
    prediction = probs.argmax(dim=1)
    counts = torch.bincount(prediction, minlength=probs.shape[1])
    factors = rare_class_factors(counts, share=rare_share, factor=rare_factor)
    scaled = scaled_entropy(normalized_entropy(probs, dim=1), prediction, factors)
    return float(region_masks(scaled, threshold)[0].double().mean())


def deep_embedded_validation(
    source_features: torch.Tensor,
    source_losses: torch.Tensor,
    target_features: torch.Tensor,
    *,
    seed: int = 0,
) -> float:
    """Importance-weighted source risk with a control variate; lower is better.

    You, Wang, Chen, Long and Jordan, "Towards Accurate Model Selection in Deep Unsupervised
    Domain Adaptation", ICML 2019 (Deep Embedded Validation). A logistic-regression domain
    classifier learns target vs source on features of one half of the source pixels and all
    target pixels; on the other half, each pixel's loss is weighted by the density ratio
    w = (n_s / n_t) · p(target | x) / p(source | x), and the control variate
    η = -Cov(w·loss, w) / Var(w) gives the risk mean(w·loss) + η · mean(w) - η.

    Shape:
        source_features: (S, D); source_losses: (S,) per-pixel losses on labelled source
        pixels; target_features: (T, D).
    """
    count = source_features.shape[0]
    if count < 4 or target_features.shape[0] < 2:
        raise ValueError(
            f"deep embedded validation needs at least 4 source and 2 target pixels, got {count} and "
            f"{target_features.shape[0]}"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    fit, held = order[: count // 2], order[count // 2 :]
    classify = _fit_domain_classifier(source_features[fit].double(), target_features.double())
    p_target = classify(source_features[held].double()).clamp(1e-6, 1 - 1e-6)
    weights = p_target / (1 - p_target) * (len(fit) / target_features.shape[0])
    weighted = weights * source_losses[held].double()
    variance = weights.var()
    eta = -_covariance(weighted, weights) / variance if variance > 0 else weights.new_zeros(())
    return float(weighted.mean() + eta * weights.mean() - eta)


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(probs, probs).sum(dim=1)


def _covariance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - a.mean()) * (b - b.mean())).sum() / (a.numel() - 1)


def _fit_domain_classifier(source: torch.Tensor, target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """p(target | x) from an L2-regularised logistic regression on standardised features."""
    features = torch.cat([source, target])
    labels = torch.cat([source.new_zeros(len(source)), source.new_ones(len(target))])
    mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(1e-6)
    standardised = (features - mean) / std
    weight = torch.zeros(features.shape[1], dtype=features.dtype, requires_grad=True)
    bias = torch.zeros((), dtype=features.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        logits = standardised @ weight + bias
        value = F.binary_cross_entropy_with_logits(logits, labels) + DEV_L2 * weight.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    weight, bias = weight.detach(), bias.detach()
    return lambda x: torch.sigmoid((x - mean) / std @ weight + bias)


@dataclass(frozen=True)
class Criterion:
    """A criterion's direction and what it reads: the views (agreement), labelled source images (DEV)."""

    higher_is_better: bool
    title: str
    needs_views: bool = False
    needs_source: bool = False


CRITERIA: dict[str, Criterion] = {
    "entropy": Criterion(False, "mean normalised entropy"),
    "infomax": Criterion(True, "information maximisation"),
    "snd": Criterion(True, "soft neighbourhood density"),
    "agreement": Criterion(True, "agreement under flip and rescale", needs_views=True),
    "trusted": Criterion(True, "trusted fraction at λ"),
    "dev": Criterion(False, "deep embedded validation (source risk)", needs_source=True),
}
# The criteria that read target images only.
TARGET_CRITERIA = tuple(name for name, criterion in CRITERIA.items() if not criterion.needs_source)


def check_criteria(names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in CRITERIA]
    if unknown or not names:
        raise ValueError(f"unknown criteria {unknown or '(none given)'}; choose from {', '.join(CRITERIA)}")


# ------------------------------------------------------------------------------------ pixels
def sample_at(maps: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Values of a low-resolution map at pixels (ys, xs) of its upsampling to ``output_size``.

    Equals ``F.interpolate(maps, output_size, mode="bilinear", align_corners=True)[0, :, ys, xs].T``.

    Shape:
        maps: (1, C, h, w); ys, xs: (P,) integer pixel coordinates; output: (P, C) float32.
    """
    height, width = output_size
    grid_x = 2 * xs.double() / max(width - 1, 1) - 1
    grid_y = 2 * ys.double() / max(height - 1, 1) - 1
    grid = torch.stack([grid_x, grid_y], dim=1).to(maps.device, torch.float32)[None, None]
    return F.grid_sample(maps.float(), grid, mode="bilinear", align_corners=True)[0, :, 0].T


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def target_pixels(size: tuple[int, int], count: int, seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` pixel coordinates (ys, xs) drawn uniformly from an image of ``size``, fixed by (seed, index)."""
    flat = torch.randint(size[0] * size[1], (count,), generator=_generator(seed, index))
    return flat // size[1], flat % size[1]


def labelled_pixels(mask: torch.Tensor, count: int, seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` coordinates drawn from the labelled (non-255) pixels of ``mask``; none if it has none."""
    valid = (mask.flatten() != IGNORE_INDEX).nonzero()[:, 0]
    if len(valid) == 0:
        return valid, valid
    flat = valid[torch.randint(len(valid), (count,), generator=_generator(seed, index))]
    return flat // mask.shape[1], flat % mask.shape[1]


@dataclass
class TargetPixels:
    """What one model gives on the sampled target pixels."""

    probs: torch.Tensor  # (P, K)
    features: torch.Tensor | None  # (F, D): the first DEV_PIXELS_PER_IMAGE pixels of each image
    view_predictions: torch.Tensor | None  # (V, P)
    pass_seconds: float
    view_seconds: float


@torch.inference_mode()
def gather_target(
    segmenter: nn.Module,
    loader: torch.utils.data.DataLoader,
    *,
    device: torch.device,
    pixels_per_image: int,
    seed: int,
    views: bool,
    features: bool,
) -> TargetPixels:
    """Probabilities (and features, and the classes under flip and rescale) at sampled pixels.

    ``loader`` yields single images (batch size 1) with ``original_size``, the size the pixels
    are drawn at (``WithOriginalSize``).
    """
    probs, feature_rows, view_rows = [], [], []
    pass_seconds = view_seconds = 0.0
    for sample in loader:
        start = time.perf_counter()
        image = sample["image"].to(device, non_blocking=True)
        size = tuple(int(value) for value in sample["original_size"][0])
        ys, xs = target_pixels(size, pixels_per_image, seed, int(sample["index"][0]))
        output = segmenter(image)
        logits = sample_at(output["logits"], ys, xs, size)
        probs.append(logits.softmax(dim=1).cpu())
        if features:
            count = min(DEV_PIXELS_PER_IMAGE, pixels_per_image)
            feature_rows.append(sample_at(output["features"], ys[:count], xs[:count], size).cpu())
        middle = time.perf_counter()
        pass_seconds += middle - start
        if views:
            view_rows.append(_view_predictions(segmenter, image, ys, xs, size).cpu())
            view_seconds += time.perf_counter() - middle
    if not probs:
        raise ValueError("no target images to score")
    return TargetPixels(
        probs=torch.cat(probs),
        features=torch.cat(feature_rows) if features else None,
        view_predictions=torch.cat(view_rows, dim=1) if views else None,
        pass_seconds=pass_seconds,
        view_seconds=view_seconds,
    )


def _view_predictions(
    segmenter: nn.Module, image: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Classes at the pixels in the flipped view (read back at the mirrored pixels) and each rescaled view."""
    flipped = segmenter(image.flip(-1))["logits"]
    rows = [sample_at(flipped, ys, size[1] - 1 - xs, size).argmax(dim=1)]
    height, width = image.shape[-2:]
    for scale in AGREEMENT_SCALES:
        # Resized as predict_probs resizes a scaled input.
        scaled_size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = F.interpolate(image, size=scaled_size, mode="bilinear", align_corners=True)
        rows.append(sample_at(segmenter(scaled)["logits"], ys, xs, size).argmax(dim=1))
    return torch.stack(rows)


@torch.inference_mode()
def gather_source(
    segmenter: nn.Module, loader: torch.utils.data.DataLoader, *, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Features and cross-entropy losses at sampled labelled pixels of source images; and the seconds.

    ``loader`` yields single labelled images (``mask`` at label resolution).

    Shape:
        outputs: (S, D) features, (S,) losses.
    """
    start = time.perf_counter()
    features, losses = [], []
    for sample in loader:
        mask = sample["mask"][0]
        ys, xs = labelled_pixels(mask, DEV_PIXELS_PER_IMAGE, seed, int(sample["index"][0]))
        if len(ys) == 0:
            continue
        size = tuple(mask.shape)
        output = segmenter(sample["image"].to(device, non_blocking=True))
        logits = sample_at(output["logits"], ys, xs, size)
        losses.append(F.cross_entropy(logits, mask[ys, xs].to(logits.device), reduction="none").cpu())
        features.append(sample_at(output["features"], ys, xs, size).cpu())
    if not losses:
        raise ValueError("the source images hold no labelled pixel; DEV needs labelled source images")
    return torch.cat(features), torch.cat(losses), time.perf_counter() - start


# ------------------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class TrustRule:
    """The rule of the trusted-fraction criterion (a store's manifest records one)."""

    threshold: float
    rare_share: float
    rare_factor: float


def score_segmenter(
    segmenter: nn.Module,
    criteria: Sequence[str],
    *,
    target: torch.utils.data.DataLoader,
    source: torch.utils.data.DataLoader | None,
    rule: TrustRule,
    device: torch.device,
    pixels_per_image: int,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, float]]:
    """The criteria's scores of one segmenter, and each criterion's seconds.

    A criterion's seconds are what it would cost alone: the target pass (shared by all), the
    view passes (agreement) or the source pass (DEV), plus its own computation.

    Args:
        segmenter: in eval mode on ``device``.
        criteria: names in ``CRITERIA``.
        target: unlabelled target images (see ``gather_target``).
        source: labelled source images, required by ``dev``.
        rule: λ and the rare-class rule of ``trusted``.
        pixels_per_image: target pixels drawn per image.
        seed: fixes the pixels.
    """
    check_criteria(criteria)
    needs_source = any(CRITERIA[name].needs_source for name in criteria)
    if needs_source and source is None:
        raise ValueError("the dev criterion needs labelled source images (--source-dataset, --source-root)")
    pixels = gather_target(
        segmenter,
        target,
        device=device,
        pixels_per_image=pixels_per_image,
        seed=seed,
        views=any(CRITERIA[name].needs_views for name in criteria),
        features=needs_source,
    )
    source_seconds = 0.0
    if needs_source:
        source_features, source_losses, source_seconds = gather_source(segmenter, source, device=device, seed=seed)
    probs = pixels.probs
    compute: dict[str, Callable[[], float]] = {
        "entropy": lambda: mean_normalized_entropy(probs),
        "infomax": lambda: information_maximization(probs),
        "snd": lambda: soft_neighborhood_density(_spread_subset(probs, SND_MAX_PIXELS)),
        "agreement": lambda: view_agreement(probs.argmax(dim=1), pixels.view_predictions),
        "trusted": lambda: trusted_fraction(probs, rule.threshold, rule.rare_share, rule.rare_factor),
        "dev": lambda: deep_embedded_validation(source_features, source_losses, pixels.features, seed=seed),
    }
    scores, seconds = {}, {}
    for name in criteria:
        start = time.perf_counter()
        scores[name] = compute[name]()
        passes = pixels.pass_seconds
        passes += pixels.view_seconds if CRITERIA[name].needs_views else 0.0
        passes += source_seconds if CRITERIA[name].needs_source else 0.0
        seconds[name] = passes + time.perf_counter() - start
    return scores, seconds


def _spread_subset(rows: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` rows, evenly spaced (the pixels are already random)."""
    if len(rows) <= limit:
        return rows
    return rows[torch.linspace(0, len(rows) - 1, limit).round().long()]
