"""Paired transforms over sample dicts (see the sample contract in ``docs/architecture.md``).

A transform takes a sample and returns it. Geometric transforms sample their parameters once
and apply them to every spatial key: ``image`` (3×H×W), integer maps such as ``mask`` and
``pseudo_mask`` (H×W, nearest, padded with 255) and float maps such as ``entropy`` (H×W,
bilinear, padded with the float ignore value). Photometric transforms touch ``image`` only.
Randomness comes from torch's global generator, so the engine's RNG state covers augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from crossregion.config.schema import INPUT_NORMS, DatasetSpec
from crossregion.data.labels import IGNORE_INDEX
from crossregion.trust import ENTROPY_IGNORE_VALUE

Sample = dict[str, object]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (mean, std) of each model.input_norm, applied to RGB scaled to [0, 1].
INPUT_NORM_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    # ProDA's loaders: RGB / 255 with mean 0 and no std (microsoft/ProDA data/*_dataset.py).
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
assert tuple(INPUT_NORM_STATS) == INPUT_NORMS, "one (mean, std) per config.schema.INPUT_NORMS"
FLOAT_IGNORE = ENTROPY_IGNORE_VALUE  # pad value of float maps (entropy): neither trusted nor untrusted

IMAGE_INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def _spatial_maps(sample: Sample) -> dict[str, torch.Tensor]:
    """The per-pixel H×W maps of ``sample`` (everything 2-D except the image)."""
    return {
        key: value
        for key, value in sample.items()
        if key != "image" and isinstance(value, torch.Tensor) and value.ndim == 2
    }


def _resize_sample(sample: Sample, size: list[int], image_mode: InterpolationMode, image_only: bool = False) -> Sample:
    """Resizes image (``image_mode``), integer maps (nearest) and float maps (bilinear) to ``size``.

    Shape:
        image 3×H×W -> 3×h×w; every map H×W -> h×w (unless ``image_only``), ``size = [h, w]``.
    """
    out = dict(sample)
    # antialias only for the image: it matches PIL's bicubic downscaling; maps stay unsmoothed.
    out["image"] = TF.resize(sample["image"], size, interpolation=image_mode, antialias=True)
    if image_only:
        return out
    for key, value in _spatial_maps(sample).items():
        mode = InterpolationMode.BILINEAR if value.is_floating_point() else InterpolationMode.NEAREST
        out[key] = TF.resize(value[None], size, interpolation=mode, antialias=False)[0]
    return out


class Compose:
    """Applies transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample


class Resize:
    """Resizes every spatial key to a fixed ``height`` × ``width`` (evaluation, fixed-size inputs).

    Args:
        image_interpolation: ``"bilinear"`` or ``"bicubic"`` for the image; integer maps use
            nearest, float maps bilinear.
        image_only: resize the image and keep the maps at their size (evaluation scores
            predictions upsampled to the full-resolution label).
    """

    def __init__(self, height: int, width: int, image_interpolation: str = "bicubic", image_only: bool = False) -> None:
        if image_interpolation not in IMAGE_INTERPOLATIONS:
            raise ValueError(
                f"image_interpolation must be one of {sorted(IMAGE_INTERPOLATIONS)}, got {image_interpolation!r}"
            )
        self.size = [height, width]
        self.image_mode = IMAGE_INTERPOLATIONS[image_interpolation]
        self.image_only = image_only

    def __call__(self, sample: Sample) -> Sample:
        return _resize_sample(sample, self.size, self.image_mode, self.image_only)


class RandomScale:
    """Rescales by ``s ~ U(min_scale, max_scale)`` to ``(int(H s), int(W s))`` (image bicubic)."""

    def __init__(self, min_scale: float, max_scale: float) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"RandomScale needs 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale = min_scale
        self.max_scale = max_scale

    def __call__(self, sample: Sample) -> Sample:
        scale = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(()).item()
        height, width = sample["image"].shape[-2:]
        size = [max(1, int(height * scale)), max(1, int(width * scale))]
        return _resize_sample(sample, size, InterpolationMode.BICUBIC)


class RandomCrop:
    """Crops ``height`` × ``width`` at a random place, padding bottom/right first if smaller.

    Pads the image with 0, integer maps with 255 (ignore) and float maps with ``float_ignore``.
    """

    def __init__(self, height: int, width: int, float_ignore: float = FLOAT_IGNORE) -> None:
        self.height = height
        self.width = width
        self.float_ignore = float_ignore

    def __call__(self, sample: Sample) -> Sample:
        height, width = sample["image"].shape[-2:]
        pad_bottom = max(0, self.height - height)
        pad_right = max(0, self.width - width)
        top = int(torch.randint(0, height + pad_bottom - self.height + 1, ()).item())
        left = int(torch.randint(0, width + pad_right - self.width + 1, ()).item())
        out = dict(sample)
        spatial = {"image": sample["image"], **_spatial_maps(sample)}
        for key, value in spatial.items():
            if pad_bottom or pad_right:
                if key == "image":
                    fill = 0
                elif value.is_floating_point():
                    fill = self.float_ignore
                else:
                    fill = IGNORE_INDEX
                value = torch.nn.functional.pad(value, (0, pad_right, 0, pad_bottom), value=fill)
            out[key] = value[..., top : top + self.height, left : left + self.width]
        return out


class RandomHorizontalFlip:
    """Flips every spatial key left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand(()).item() >= self.p:
            return sample
        out = dict(sample)
        out["image"] = sample["image"].flip(-1)
        for key, value in _spatial_maps(sample).items():
            out[key] = value.flip(-1)
        return out


class ColorJitter:
    """torchvision's colour jitter on the image only (random op order, factors as torchvision's).

    Pseudo labels and entropy maps were computed on the un-jittered image, so they stay as they are.
    """

    def __init__(
        self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0
    ) -> None:
        self.jitter = T.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)

    def __call__(self, sample: Sample) -> Sample:
        return {**sample, "image": self.jitter(sample["image"])}


class Normalize:
    """Converts a uint8 image to float in [0, 1] and normalises it with ``mean`` and ``std``
    (``normalize_for`` builds the one of a model's ``input_norm``)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        return {**sample, "image": (image - self.mean) / self.std}


def normalize_for(input_norm: str) -> Normalize:
    """The normalisation of a model's ``input_norm`` (``"imagenet"`` or ``"unit"``).

    Raises:
        ValueError: unknown ``input_norm``.
    """
    if input_norm not in INPUT_NORM_STATS:
        raise ValueError(f"unknown input normalisation {input_norm!r}; choose one of {', '.join(INPUT_NORM_STATS)}")
    return Normalize(*INPUT_NORM_STATS[input_norm])


def train_transform(spec: DatasetSpec, *, input_norm: str) -> Compose:
    """``spec``'s training augmentation in the official CRA order (docs/spec.md §1.7), then the
    normalisation of the model's ``input_norm``.

    Colour jitter (image only) -> resize -> random scale -> random crop -> flip -> normalise; each
    step only where ``spec`` asks for it. Crop padding fills float maps (entropy) with
    ``FLOAT_IGNORE`` and masks with 255.
    """
    steps: list[Callable[[Sample], Sample]] = []
    if any(spec.color_jitter):
        steps.append(ColorJitter(*spec.color_jitter))
    if spec.resize is not None:
        steps.append(Resize(*spec.resize))
    if spec.scale_range != (1.0, 1.0):
        steps.append(RandomScale(*spec.scale_range))
    if spec.crop is not None:
        steps.append(RandomCrop(*spec.crop))
    if spec.flip:
        steps.append(RandomHorizontalFlip(0.5))
    steps.append(normalize_for(input_norm))
    return Compose(steps)


class WithOriginalSize:
    """Runs a transform and records the image's size before it as ``original_size`` (height, width):
    the size that per-pixel outputs (pseudo labels, entropy, selection scores) are computed at."""

    def __init__(self, transform: Callable[[Sample], Sample]) -> None:
        self.transform = transform

    def __call__(self, sample: Sample) -> Sample:
        height, width = sample["image"].shape[-2:]
        sample = self.transform(sample)
        sample["original_size"] = torch.tensor([height, width])
        return sample


def eval_transform(*, input_norm: str, size: tuple[int, int] | None = None, resize_mask: bool = False) -> Compose:
    """Evaluation input: optional resize of the image to (height, width), then the normalisation
    of the model's ``input_norm`` (a segmenter's ``input_norm`` attribute).

    By default the ``mask`` keeps its full resolution (the protocol scores predictions
    upsampled to the label, docs/spec.md §5.2); ``resize_mask`` resizes it too (nearest).
    """
    transforms: list[Callable[[Sample], Sample]] = []
    if size is not None:
        transforms.append(Resize(*size, image_only=not resize_mask))
    transforms.append(normalize_for(input_norm))
    return Compose(transforms)
