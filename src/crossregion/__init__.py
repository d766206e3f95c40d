"""crossregion: Cross-Region Adaptation (CRA) for domain-adaptive semantic segmentation."""

__version__ = "0.1.0"
