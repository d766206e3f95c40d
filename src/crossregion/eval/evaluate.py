"""``crossregion evaluate``: score a checkpoint on a labelled split (FADA/CRA protocol, docs/spec.md §6.1).

Each image is resized (bicubic) to the test input size and normalised; the averaged class
probabilities are computed at the full label resolution, and their argmax fills one confusion
matrix on the model's device. Under DDP each process takes every world-size-th image and the
matrices are summed once at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from crossregion.data.datasets import SegmentationDataset
from crossregion.data.transforms import eval_transform
from crossregion.dist import unwrap
from crossregion.eval.inference import (
    inference_batches,
    predict_probs,
)
from crossregion.eval.metrics import ConfusionMatrix, metrics_dict
from crossregion.files import loader_workers

logger = logging.getLogger(__name__)


def evaluate_segmenter(
    segmenter: nn.Module,
    dataset: SegmentationDataset,
    *,
    input_size: tuple[int, int] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    window: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores ``segmenter`` on every labelled image of ``dataset``.

    The dataset's own transform is replaced for the run by the evaluation preset (resize the
    image to ``input_size``, normalise as the segmenter's ``input_norm`` says; the label keeps its
    full resolution) and restored after.

    Args:
        segmenter: returns ``logits`` (the Segmenter contract) and has ``input_norm`` (possibly
            wrapped by DDP); moved to ``device``, put in eval mode and restored to its previous
            mode afterwards.
        dataset: a labelled dataset whose label set matches the segmenter's classes.
        input_size: ``(height, width)`` the image is resized to; None keeps the image size.
        flip, scales, window, stride: inference options (see ``predict_probs``).
        device: where the model runs and the confusion matrix lives.
        num_workers: DataLoader worker processes for decoding images.
        progress: show a progress bar with ETA (on rank 0).

    Returns:
        The ``metrics.json`` dict (``metrics_dict``); ``settings`` holds the inference options.
    """
    if not dataset.labelled:
        raise ValueError(f"{type(dataset).__name__} {dataset.split!r} at {dataset.root} is unlabelled; cannot evaluate")
    rank, world_size = _rank_and_world_size()
    shard = torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))
    loader = torch.utils.data.DataLoader(shard, batch_size=None, num_workers=loader_workers(num_workers))
    confusion = ConfusionMatrix(dataset.num_classes, device=device)
    was_training = segmenter.training
    saved_transform = dataset.transform
    dataset.transform = eval_transform(size=input_size, input_norm=unwrap(segmenter).input_norm)
    segmenter.to(device).eval()
    try:
        progress_bar = tqdm(total=len(shard), desc="evaluate", unit="img", disable=not progress or rank != 0)
        for batch in inference_batches(loader):
            images = torch.stack([sample["image"] for sample in batch]).to(device, non_blocking=True)
            labels = torch.stack([sample["mask"] for sample in batch]).to(device, non_blocking=True)
            probs = predict_probs(
                segmenter,
                images,
                output_size=tuple(labels.shape[-2:]),
                flip=flip,
                scales=scales,
                window=window,
                stride=stride,
            )
            confusion.update(probs.argmax(dim=1), labels)
            progress_bar.update(len(batch))
        progress_bar.close()
    finally:
        dataset.transform = saved_transform
        segmenter.train(was_training)
    confusion.all_reduce()
    settings = {
        "input_size_wh": None if input_size is None else [input_size[1], input_size[0]],
        "flip": flip,
        "scales": list(scales),
        "window_wh": None if window is None else [window[1], window[0]],
        "stride_wh": None if stride is None else [stride[1], stride[0]],
        "num_images": len(dataset),
        "label_resolution": True,
    }
    return metrics_dict(confusion.compute(), dataset.class_names, settings)


def _rank_and_world_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
