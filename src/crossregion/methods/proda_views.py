"""The views both ProDA stages train on (``proda``, ``proda_distill``; docs/proda.md).

- full: the target batch as the loader gives it (its own flip included);
- weak: full, horizontally flipped per image with probability ``weak_flip_prob`` (official: random
  scale, crop and flip of the full image);
- strong: weak, with per-image brightness and contrast jitter, Gaussian noise and one cutout box
  per image (official: RandAugment's photometric *and* geometric operations plus cutout). Having
  no geometric warp here, the teacher's weak-view maps go one-to-one into the strong view; the
  cutout box is invalid for the losses, as the official padding/cutout is.

Built inside the step with tensor ops (official: RandAugment-style pipelines on the CPU). The
target losses are taken at ``1 / label_downsample`` of the input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crossregion.config.schema import MethodConfig
from crossregion.data.transforms import INPUT_NORM_STATS
from crossregion.methods.base import check_fraction, check_non_negative


@dataclass(frozen=True)
class ProdaViewConfig(MethodConfig):
    """What ProDA's stages share: the loss resolution and the weak and strong views."""

    name: str
    # Target losses at 1/label_downsample of the input resolution (official: 4).
    label_downsample: int = 4
    # Weak view: per-image horizontal flip probability.
    weak_flip_prob: float = 0.5
    # Strong view: brightness offset ~ U(-b, b) and contrast factor ~ U(1 - c, 1 + c) per image (on
    # normalised images), Gaussian noise std, one cutout box of this fraction of each side.
    strong_brightness: float = 0.4
    strong_contrast: float = 0.4
    strong_noise_std: float = 0.1
    strong_cutout: float = 0.3

    def check_views(self) -> None:
        """Raise ``ValueError`` naming the field when a view setting is out of range."""
        check_non_negative(self, "strong_brightness", "strong_noise_std")
        check_fraction(self, "weak_flip_prob")
        if not 0.0 <= self.strong_contrast < 1.0:
            raise ValueError(f"method.strong_contrast must be in [0, 1), got {self.strong_contrast}")
        if not 0.0 <= self.strong_cutout < 1.0:
            raise ValueError(f"method.strong_cutout must be in [0, 1), got {self.strong_cutout}")
        if self.label_downsample < 1:
            raise ValueError(f"method.label_downsample must be >= 1, got {self.label_downsample}")


def flip_where(tensor: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Horizontally flip the images of ``tensor`` (N, ..., W) where ``flip`` (N,) bool is set."""
    shape = (-1,) + (1,) * (tensor.ndim - 1)
    return torch.where(flip.view(shape), tensor.flip(-1), tensor)


def strong_view(
    images: torch.Tensor,
    cfg: ProdaViewConfig,
    generator: torch.Generator | None = None,
    *,
    input_norm: str = "imagenet",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The strong view of (normalised) images and its valid-pixel mask (False in the cutout box).

    Per image: contrast factor around the image mean, brightness offset, Gaussian noise, and one
    cutout box (set to 0, the normalised mean) of ``strong_cutout`` times each side. The
    constants are in ImageNet-normalised units: images of another ``input_norm`` (ProDA's RGB/255)
    are mapped there, changed, and mapped back, so a preset's view does not depend on it.

    Shape:
        - images: (N, 3, H, W)
        - outputs: (N, 3, H, W), (N, H, W) bool
    """
    if input_norm != "imagenet":
        own_mean, own_std = (
            torch.tensor(v, device=images.device, dtype=images.dtype).view(3, 1, 1)
            for v in INPUT_NORM_STATS[input_norm]
        )
        imagenet_mean, imagenet_std = (
            torch.tensor(v, device=images.device, dtype=images.dtype).view(3, 1, 1)
            for v in INPUT_NORM_STATS["imagenet"]
        )
        rgb = images * own_std + own_mean
        out, valid = strong_view((rgb - imagenet_mean) / imagenet_std, cfg, generator)
        return ((out * imagenet_std + imagenet_mean) - own_mean) / own_std, valid
    n, _, h, w = images.shape
    device, dtype = images.device, images.dtype

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)).to(device, dtype)

    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = (images - mean) * uniform(1 - cfg.strong_contrast, 1 + cfg.strong_contrast) + mean
    out = out + uniform(-cfg.strong_brightness, cfg.strong_brightness)
    if cfg.strong_noise_std > 0:
        out = out + cfg.strong_noise_std * torch.randn(images.shape, generator=generator).to(device, dtype)
    valid = torch.ones(n, h, w, dtype=torch.bool, device=device)
    box_h, box_w = int(round(cfg.strong_cutout * h)), int(round(cfg.strong_cutout * w))
    if box_h > 0 and box_w > 0:
        tops = torch.randint(0, h - box_h + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, w - box_w + 1, (n,), generator=generator).tolist()
        for index, (top, left) in enumerate(zip(tops, lefts)):
            valid[index, top : top + box_h, left : left + box_w] = False
        out = out * valid[:, None].to(dtype)
    return out, valid


@dataclass(frozen=True)
class TargetViews:
    """The views of one target batch.

    Shape:
        - flip: (N,) bool, the images the weak view flipped
        - weak, strong: (N, 3, H, W)
        - label_valid: (N, h, w) bool at ``size``, False in the strong view's cutout box
    """

    # (h, w): the resolution of the target losses, 1 / label_downsample of the input.
    size: tuple[int, int]
    flip: torch.Tensor
    weak: torch.Tensor
    strong: torch.Tensor
    label_valid: torch.Tensor


def target_views(full: torch.Tensor, cfg: ProdaViewConfig, *, input_norm: str) -> TargetViews:
    """The weak and strong views of the target images ``full`` (N, 3, H, W), from the global RNG."""
    n, _, h, w = full.shape
    size = (max(1, h // cfg.label_downsample), max(1, w // cfg.label_downsample))
    flip = (torch.rand(n) < cfg.weak_flip_prob).to(full.device)
    weak = flip_where(full, flip)
    strong, strong_valid = strong_view(weak, cfg, input_norm=input_norm)
    label_valid = F.interpolate(strong_valid[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    return TargetViews(size=size, flip=flip, weak=weak, strong=strong, label_valid=label_valid)
