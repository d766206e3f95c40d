"""Segmenters (DeepLabv2 on ResNet / VGG-16), discriminators and checkpoint import/export."""

from crossregion.models.backbones import (
    BACKBONES,
    FrozenBatchNorm2d,
    build_feature_extractor,
    load_pretrained_backbone,
)
from crossregion.models.checkpoint_io import export_official, load_segmenter
from crossregion.models.deeplabv2 import HEADS, ASPPClassifier, Segmenter, build_segmenter
from crossregion.models.discriminators import (
    FineGrainedDiscriminator,
    OutputSpaceDiscriminator,
    ProdaDiscriminator,
)
from crossregion.models.proda_head import ProDAClassifier
from crossregion.models.weights import strip_wrapper_prefixes

__all__ = [
    "BACKBONES",
    "HEADS",
    "ASPPClassifier",
    "FineGrainedDiscriminator",
    "FrozenBatchNorm2d",
    "OutputSpaceDiscriminator",
    "ProDAClassifier",
    "ProdaDiscriminator",
    "Segmenter",
    "build_feature_extractor",
    "build_segmenter",
    "export_official",
    "load_pretrained_backbone",
    "load_segmenter",
    "strip_wrapper_prefixes",
]
