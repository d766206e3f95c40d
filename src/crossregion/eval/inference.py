"""Test-time inference: class probabilities with flip, multi-scale and sliding-window averaging.

Follows FADA/CRA ``test.py`` (docs/spec.md §6.1): logits are upsampled bilinearly with
``align_corners=True`` to the output (label) size, softmaxed there, and the softmax maps of all
scales and flips are averaged. Scales are relative to the test input handed in; a scaled input
is resized bilinearly with ``align_corners=True`` as the official ``multi_scale_inference`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Output pixels per inference batch. Images of the embedded benchmark (80×160) go 20 at a time,
# about 3× faster per image than one by one on a 2-core CPU; a Cityscapes or GTA5 image (2M
# pixels) goes alone, so the memory of real-data inference stays what it was.
INFERENCE_BATCH_PIXELS = 2**18


def _sample_sizes(sample: dict) -> tuple:
    """The image size and the output size of a sample (its label, or its recorded original size)."""
    if "mask" in sample:
        output = tuple(sample["mask"].shape[-2:])
    elif "original_size" in sample:
        output = tuple(int(value) for value in sample["original_size"])
    else:
        output = tuple(sample["image"].shape[-2:])
    return tuple(sample["image"].shape), output


def inference_batches(samples: Iterable[dict], max_pixels: int = INFERENCE_BATCH_PIXELS) -> Iterator[list[dict]]:
    """Consecutive single samples (a DataLoader with ``batch_size=None``) gathered into lists of one
    image size and one output size, together at most ``max_pixels`` output pixels (at least one
    sample), in order: what ``predict_probs`` can run as one batch."""
    batch: list[dict] = []
    for sample in samples:
        sizes = _sample_sizes(sample)
        pixels = sizes[1][0] * sizes[1][1]
        if batch and (sizes != _sample_sizes(batch[0]) or (len(batch) + 1) * pixels > max_pixels):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


@torch.inference_mode()
def predict_probs(
    segmenter: nn.Module,
    images: torch.Tensor,
    *,
    output_size: tuple[int, int],
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Averaged class probabilities at ``output_size``.

    Args:
        segmenter: returns a dict with ``logits`` (the ``Segmenter`` contract); put it in eval
            mode first.
        images: normalised images at the test input size, on the segmenter's device.
        output_size: ``(height, width)`` of the probabilities, normally the label size.
        flip: also run the horizontally flipped images and average (doubles the cost).
        scales: input scale factors; each costs one more pass.
        window: ``(height, width)`` of sliding-window crops; ``None`` runs the whole image.
        stride: ``(height, width)`` step between crops; default two thirds of the window, so
            neighbouring crops overlap by a third.

    Returns:
        Probabilities that sum to 1 over the class dimension.

    Shape:
        images: N×3×H×W. Output: N×K×output_size[0]×output_size[1], float32.
    """
    if not scales:
        raise ValueError("scales must name at least one scale, e.g. (1.0,)")
    if window is None and stride is not None:
        raise ValueError("stride needs a window: give both, or neither for whole-image inference")
    if window is not None and stride is None:
        stride = (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
    height, width = images.shape[-2:]
    probs_sum = None
    num_maps = 0
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"scales must be positive, got {scale}")
        scaled_size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = images
        if scaled_size != (height, width):
            scaled = F.interpolate(images, size=scaled_size, mode="bilinear", align_corners=True)
        for flipped in (False, True) if flip else (False,):
            inputs = scaled.flip(-1) if flipped else scaled
            if window is None:
                logits = segmenter(inputs)["logits"]
            else:
                logits = sliding_window_logits(segmenter, inputs, window=window, stride=stride)
            logits = F.interpolate(logits.float(), size=output_size, mode="bilinear", align_corners=True)
            probs = logits.softmax(dim=1)
            if flipped:
                probs = probs.flip(-1)
            probs_sum = probs if probs_sum is None else probs_sum + probs
            num_maps += 1
    return probs_sum / num_maps


def sliding_window_logits(
    segmenter: nn.Module,
    images: torch.Tensor,
    *,
    window: tuple[int, int],
    stride: tuple[int, int],
) -> torch.Tensor:
    """Logits of the whole image from overlapping crops, averaged where crops overlap.

    Each crop's logits are upsampled to the crop size (bilinear, ``align_corners=True``) and
    added into an input-size map; the last crop of a row or column is shifted back to end at the
    image border, so every pixel is covered and no crop is padded. An image smaller than the
    window in a dimension is run whole in that dimension.

    Shape:
        images: N×3×H×W. Output: N×K×H×W (input resolution, not stride 8).
    """
    if min(window) < 1 or min(stride) < 1:
        raise ValueError(f"window {window} and stride {stride} must be positive")
    height, width = images.shape[-2:]
    crop_height, crop_width = min(window[0], height), min(window[1], width)
    tops = _crop_starts(height, crop_height, stride[0])
    lefts = _crop_starts(width, crop_width, stride[1])
    logits_sum = None
    coverage = torch.zeros(1, 1, height, width, device=images.device)
    for top in tops:
        for left in lefts:
            crop = images[..., top : top + crop_height, left : left + crop_width]
            logits = segmenter(crop)["logits"].float()
            logits = F.interpolate(logits, size=(crop_height, crop_width), mode="bilinear", align_corners=True)
            if logits_sum is None:
                logits_sum = images.new_zeros(images.shape[0], logits.shape[1], height, width, dtype=torch.float32)
            logits_sum[..., top : top + crop_height, left : left + crop_width] += logits
            coverage[..., top : top + crop_height, left : left + crop_width] += 1
    return logits_sum / coverage


def _crop_starts(length: int, crop: int, stride: int) -> list[int]:
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts
