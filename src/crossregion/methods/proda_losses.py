"""ProDA's losses and prototype weighting (Zhang et al., CVPR 2021): stateless tensor functions.

Semantics follow ProDA's official code (``models/adaptation_modelv2.py``, ``parser_train.py``);
docs/proda.md lists every constant and where the paper's text differs. The per-run state lives
elsewhere: the class prototypes in ``methods/proda_prototypes.py``, the EMA teacher's step in
``methods/ema.py``.

Conventions: ``features`` are the head's prototype features (``Segmenter`` with ``head="proda"``),
``prototypes`` a (K, C) tensor, labels are train IDs with ``ignore_index`` for "no label" (the
official code uses 250; crossregion's default is ``IGNORE_INDEX``, 255).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossregion.data.labels import IGNORE_INDEX

# --- Constants of the official code (parser_train.py defaults unless said otherwise) ---------
# proto_temperature = 1.0. The code multiplies distances by it (an inverse temperature); the
# paper divides by tau. Equal at the value used.
PROTO_TEMPERATURE = 1.0
# Symmetric cross-entropy weights: loss = rce_alpha * CE + rce_beta * RCE (--rce on in stage 1).
RCE_ALPHA = 0.1
RCE_BETA = 1.0
# RCE clamps the softmax to [1e-7, 1] and the one-hot label to [1e-4, 1], so log 0 becomes
# log 1e-4 (about -9.21) for the non-label classes.
RCE_PROB_MIN = 1e-7
RCE_LABEL_MIN = 1e-4
# Added to RCE's pixel count (not to CE's, which is F.cross_entropy's mean).
RCE_COUNT_EPS = 1e-6
# Weight of the prototype-assignment KL between weak and strong views: README's stage-1 command
# sets --proto_consistW 10 (parser default 1.0).
PROTO_CONSIST_WEIGHT = 10.0
# Weight of the confidence regulariser: --regular_w 0.1 in README's GTA5 stage-1 command; the
# SYNTHIA command leaves it at the parser default 0 (synthia_proda sets it). --regular_type
# defaults to MRKLD.
REGULAR_WEIGHT_GTA5 = 0.1
REGULAR_TYPES: tuple[str, ...] = ("mrkld", "mrent")
# Rectified pseudo labels whose renormalised score is below --train_thred are ignored; default
# 0, so stage 1 ignores nothing on that account.
RECTIFY_THRESHOLD = 0.0
# Ignore label of the official code (its data loaders and the strong-view padding value).
OFFICIAL_IGNORE_INDEX = 250
# Stage 2/3 (self-distillation into a SimCLR-initialised student): hard pseudo labels from the
# flip-averaged previous model, ignored at confidence <= 0.95, KD weight 1, lr 6e-4.
DISTILL_PSEUDO_THRESHOLD = 0.95
DISTILL_WEIGHT = 1.0


def reverse_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """RCE of symmetric cross-entropy: -sum_k p_k log q_k with q the clamped one-hot label.

    p is the softmax clamped to ``[RCE_PROB_MIN, 1]``, q the one-hot label clamped to
    ``[RCE_LABEL_MIN, 1]``; the sum over labelled pixels is divided by their count plus
    ``RCE_COUNT_EPS``, so an all-ignored batch gives 0.

    Shape:
        - logits: (N, K, H, W)
        - labels: (N, H, W) integer
        - output: scalar
    """
    num_classes = logits.shape[1]
    probs = F.softmax(logits, dim=1).clamp(min=RCE_PROB_MIN, max=1.0)
    valid = labels != ignore_index
    one_hot = F.one_hot(torch.where(valid, labels, 0).long(), num_classes).permute(0, 3, 1, 2)
    log_label = one_hot.to(probs.dtype).clamp(min=RCE_LABEL_MIN, max=1.0).log()
    per_pixel = -(probs * log_label).sum(dim=1)
    valid_f = valid.to(per_pixel.dtype)
    return (per_pixel * valid_f).sum() / (valid_f.sum() + RCE_COUNT_EPS)


def symmetric_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = RCE_ALPHA,
    beta: float = RCE_BETA,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """ProDA's pseudo-label loss with --rce: ``alpha * CE + beta * RCE`` (Wang et al., ICCV 2019).

    CE is the mean over labelled pixels (``F.cross_entropy`` with ``ignore_index``); unlike the
    official code, an all-ignored batch gives CE = 0 instead of NaN.

    Shape:
        - logits: (N, K, H, W)
        - labels: (N, H, W) integer
        - output: scalar
    """
    valid = labels != ignore_index
    if bool(valid.any()):
        ce = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)
    else:
        ce = logits.sum() * 0.0  # keeps the graph, as a real loss would
    rce = reverse_cross_entropy(logits, labels, ignore_index=ignore_index)
    return alpha * ce + beta * rce


def prototype_distances(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of every pixel's feature to every class prototype.

    Computed class by class, as the official code does, so memory stays at one (N, C, H, W)
    difference rather than (N, K, C, H, W).

    Shape:
        - features: (N, C, H, W)
        - prototypes: (K, C)
        - output: (N, K, H, W)
    """
    if features.shape[1] != prototypes.shape[1]:
        raise ValueError(f"features have {features.shape[1]} channels but prototypes {prototypes.shape[1]}")
    prototypes = prototypes.to(device=features.device, dtype=features.dtype)
    return torch.stack(
        [torch.linalg.vector_norm(features - prototype[None, :, None, None], dim=1) for prototype in prototypes],
        dim=1,
    )


def prototype_weights(
    features: torch.Tensor, prototypes: torch.Tensor, *, temperature: float = PROTO_TEMPERATURE
) -> torch.Tensor:
    """Per-pixel class weights from prototype distances: ``softmax_k(-(d_k - min_j d_j) * T)``.

    Subtracting the nearest distance changes nothing mathematically (the official code does it;
    it keeps the exponentials in range). ``temperature`` multiplies, as ``proto_temperature``
    does in the code. In ProDA the features come from the EMA model on the weak view.

    Shape:
        - features: (N, C, H, W)
        - prototypes: (K, C)
        - output: (N, K, H, W), summing to 1 over K
    """
    distances = prototype_distances(features, prototypes)
    distances = distances - distances.min(dim=1, keepdim=True).values
    return F.softmax(-distances * temperature, dim=1)


def rectify_pseudo_labels(
    soft_labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    threshold: float = RECTIFY_THRESHOLD,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ProDA's online label denoising: ``argmax_k(weights_k * soft_k)``.

    ``soft_labels`` are the fixed soft pseudo labels (softmax of the warm-up model, saved once
    before stage 1, not the EMA model's predictions); ``weights`` come from
    ``prototype_weights``. The product is renormalised over K; pixels whose largest renormalised
    score is below ``threshold`` get ``ignore_index`` (none with the official threshold 0).

    Returns:
        (labels, confidence): the rectified hard labels and the renormalised top score.

    Shape:
        - soft_labels, weights: (N, K, H, W)
        - labels: (N, H, W) long; confidence: (N, H, W)
    """
    rectified = weights * soft_labels
    labels = rectified.argmax(dim=1)
    confidence = (rectified / rectified.sum(dim=1, keepdim=True)).max(dim=1).values
    labels = torch.where(confidence < threshold, torch.full_like(labels, ignore_index), labels)
    return labels, confidence


def prototype_consistency_loss(
    student_distances: torch.Tensor,
    teacher_distances: torch.Tensor,
    *,
    temperature: float = PROTO_TEMPERATURE,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Target structure learning: KL(teacher || student) of the soft prototype assignments.

    teacher = softmax(-d_teacher * T) (the EMA model's weak-view distances, already warped into
    the strong view), student = log_softmax(-d_student * T) (the student's strong-view distances).
    As in the official code the element-wise KL is averaged over *classes and* valid pixels, i.e.
    the per-pixel KL divided by K. No gradient flows into ``teacher_distances`` or prototypes
    through this function's teacher side (it is detached).

    Args:
        student_distances, teacher_distances: from ``prototype_distances``.
        temperature: multiplies the negative distances.
        valid: pixels that exist in both views (the official code masks the strong view's
            padding), or None for all.

    Shape:
        - student_distances, teacher_distances: (N, K, H, W)
        - valid: (N, H, W) bool
        - output: scalar
    """
    teacher = F.softmax(-teacher_distances.detach() * temperature, dim=1)
    student = F.log_softmax(-student_distances * temperature, dim=1)
    elementwise = F.kl_div(student, teacher, reduction="none")
    if valid is None:
        return elementwise.mean()
    mask = valid[:, None].expand_as(elementwise).to(elementwise.dtype)
    return (elementwise * mask).sum() / mask.sum().clamp(min=1.0)


def confidence_regularizer(logits: torch.Tensor, kind: str = "mrkld") -> torch.Tensor:
    """ProDA's ``regular_loss``, the confidence regularisers of CRST (Zou et al., ICCV 2019).

    - ``"mrkld"`` (official default): mean over pixels *and classes* of ``-log p_k``, i.e.
      KL(uniform || p) / K up to a constant; it penalises near-zero class probabilities.
    - ``"mrent"``: mean over pixels of ``sum_k p_k log p_k`` (negative entropy); minimising it
      raises the entropy.

    Every pixel counts (no ignore mask).

    Shape:
        - logits: (N, K, H, W)
        - output: scalar
    """
    log_probs = F.log_softmax(logits, dim=1)
    if kind == "mrkld":
        return -log_probs.mean()
    if kind == "mrent":
        return (log_probs.exp() * log_probs).sum(dim=1).mean()
    raise ValueError(f"unknown regulariser {kind!r}; choose one of {', '.join(REGULAR_TYPES)}")
