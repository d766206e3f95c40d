"""DeepLabv2 as the official FADA/CRA code builds it: a dilated backbone and the ASPP classifier.

``head="proda"`` swaps the ASPP for ProDA's head (``crossregion.models.proda_head``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from crossregion.config.schema import INPUT_NORMS
from crossregion.models.backbones import build_feature_extractor, load_pretrained_backbone
from crossregion.models.proda_head import ProDAClassifier

logger = logging.getLogger(__name__)

ASPP_DILATIONS: tuple[int, ...] = (6, 12, 18, 24)
ASPP_INIT_STD = 0.01
# Segmentation heads: DeepLab-v2's summed ASPP, or ProDA's GroupNorm ASPP + SE + bottleneck.
HEADS: tuple[str, ...] = ("aspp", "proda")


class ASPPClassifier(nn.Module):
    """DeepLabv2 ASPP: parallel 3x3 convs with growing dilation whose outputs are summed.

    No BatchNorm, ReLU, dropout or image pooling; weights N(0, 0.01), default bias init
    (docs/spec.md §3.2).

    Args:
        in_channels: feature channels C_f.
        num_classes: K.
        dilations: one branch per dilation (padding = dilation keeps the size).

    Shape:
        - Input: (N, C_f, H, W)
        - Output: (N, K, H, W)
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: tuple[int, ...] = ASPP_DILATIONS) -> None:
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=dilation, dilation=dilation) for dilation in dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, mean=0.0, std=ASPP_INIT_STD)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.conv2d_list[0](features)
        for conv in self.conv2d_list[1:]:
            logits = logits + conv(features)
        return logits


class Segmenter(nn.Module):
    """Feature extractor + ASPP classifier (+ an auxiliary ASPP on layer3 when multi-level).

    Submodule names match the official FADA/CRA checkpoints (``feature_extractor.backbone.*``,
    ``classifier.conv2d_list.*``). ``forward`` returns stride-8 logits; callers upsample.

    With a ``ProDAClassifier`` the returned ``features`` are the head's prototype features (after
    its bottleneck and dropout), not the backbone output, and ``feature_channels`` is their width.

    Args:
        feature_extractor: a module with ``backbone`` and ``feature_channels``.
        classifier: head on the final features.
        aux_classifier: head on layer3 (AdaptSegNet/ADVENT multi-level), or None.
        input_norm: how its input images are scaled (``config.schema.INPUT_NORMS``): ``"imagenet"``
            or ``"unit"`` (ProDA's RGB/255). Not applied here: whoever turns images into tensors
            for this model reads it (``data.transforms.normalize_for``); checkpoints store it.
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        classifier: ASPPClassifier | ProDAClassifier,
        aux_classifier: ASPPClassifier | None = None,
        input_norm: str = "imagenet",
    ) -> None:
        super().__init__()
        if isinstance(classifier, ProDAClassifier) and aux_classifier is not None:
            raise ValueError("the ProDA head has no multi-level variant")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {input_norm!r}; choose one of {', '.join(INPUT_NORMS)}")
        self.input_norm = input_norm
        self.feature_extractor = feature_extractor
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.feature_channels: int = (
            classifier.feature_channels
            if isinstance(classifier, ProDAClassifier)
            else feature_extractor.feature_channels
        )

    @property
    def head(self) -> str:
        """``"proda"`` or ``"aspp"``: the ``build_segmenter`` argument that rebuilds this head."""
        return "proda" if isinstance(self.classifier, ProDAClassifier) else "aspp"

    @property
    def multi_level(self) -> bool:
        return self.aux_classifier is not None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Runs the segmenter.

        Returns:
            ``features`` (backbone output; the prototype features with the ProDA head),
            ``logits``, and ``aux_logits`` when multi-level.

        Shape:
            - images: (N, 3, H, W), normalised
            - features: (N, C_f, H/8, W/8) (rounded up); C_f = ``feature_channels``
            - logits, aux_logits: (N, K, H/8, W/8)
        """
        if isinstance(self.classifier, ProDAClassifier):
            features, logits = self.classifier.forward_features(self.feature_extractor(images))
            return {"features": features, "logits": logits}
        if self.aux_classifier is None:
            features = self.feature_extractor(images)
            return {"features": features, "logits": self.classifier(features)}
        layer3_features, features = self.feature_extractor.forward_with_intermediate(images)
        return {
            "features": features,
            "logits": self.classifier(features),
            "aux_logits": self.aux_classifier(layer3_features),
        }

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split into ``backbone`` and ``head`` (both classifiers).

        The trainer gives ``head`` its larger learning rate (×10 in FADA/CRA).
        """
        heads = [self.classifier] + ([self.aux_classifier] if self.aux_classifier is not None else [])
        return {
            "backbone": [p for p in self.feature_extractor.parameters() if p.requires_grad],
            "head": [p for head in heads for p in head.parameters() if p.requires_grad],
        }


def build_segmenter(
    backbone: str,
    num_classes: int,
    *,
    pretrained: str | Path | None = None,
    freeze_bn: bool = False,
    multi_level: bool = False,
    head: str = "aspp",
    input_norm: str = "imagenet",
) -> Segmenter:
    """DeepLabv2 with the named backbone.

    Args:
        backbone: ``resnet101`` or ``vgg16`` (paper), ``resnet18``/``resnet34``/``resnet50`` (CPU).
        num_classes: K.
        pretrained: a local torchvision-format ImageNet state dict file for the backbone, or None
            for random initialisation. Nothing downloads.
        freeze_bn: use FrozenBatchNorm2d (no epsilon, statistics from ``pretrained``).
        multi_level: add the auxiliary ASPP on layer3 (ResNets only) and return ``aux_logits``.
        head: ``"aspp"`` (DeepLab-v2) or ``"proda"`` (ProDA's head; ``features`` are then its
            prototype features). ProDA's official model is ``resnet101_deeplab`` + ``"proda"``.
        input_norm: the input scaling the model is trained and run with (``Segmenter``).

    Raises:
        KeyError: unknown backbone.
        ValueError: bad ``num_classes`` or ``head``, multi-level VGG or ProDA head, or a
            ``pretrained`` file that does not fit.
        FileNotFoundError: ``pretrained`` does not exist.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if head == "proda" and multi_level:
        raise ValueError("the ProDA head has no multi-level variant; set multi_level to false")
    feature_extractor = build_feature_extractor(backbone, freeze_bn=freeze_bn)
    if multi_level and not hasattr(feature_extractor, "forward_with_intermediate"):
        raise ValueError(f"multi_level needs a ResNet backbone (layer3 features); {backbone!r} has none")
    if pretrained is not None:
        weights_norm = load_pretrained_backbone(feature_extractor, pretrained)
        if weights_norm != input_norm:
            # Not an error: official ProDA feeds RGB/255 to torchvision's ImageNet weights, whose
            # BatchNorm adapts during training.
            logger.info(
                "pretrained weights %s were trained on %s-normalised input; the model is fed %s-normalised input",
                pretrained,
                weights_norm,
                input_norm,
            )
    classifier: ASPPClassifier | ProDAClassifier = (
        ProDAClassifier(feature_extractor.feature_channels, num_classes)
        if head == "proda"
        else ASPPClassifier(feature_extractor.feature_channels, num_classes)
    )
    aux_classifier = ASPPClassifier(feature_extractor.intermediate_channels, num_classes) if multi_level else None
    return Segmenter(feature_extractor, classifier, aux_classifier, input_norm=input_norm)
