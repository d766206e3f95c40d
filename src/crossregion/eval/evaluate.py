"""``crossregion evaluate``: score a checkpoint on a labelled split (FADA/CRA protocol, spec §6.1).

Each image is resized (bicubic) to the test input size and normalised; the averaged class
probabilities are computed at the full label resolution, and their argmax fills one confusion
matrix on the model's device. Under DDP each process takes every world-size-th image and the
matrices are summed once at the end.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from crossregion.data.datasets import DATASETS, SegmentationDataset, build_dataset
from crossregion.data.transforms import eval_transform
from crossregion.eval.inference import (
    add_checkpoint_arguments, add_inference_arguments, inference_options, predict_probs,
)
from crossregion.eval.metrics import ConfusionMatrix, metrics_dict, write_cli_metrics
from crossregion.files import check_output_folder

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
    image to ``input_size``, normalise; the label keeps its full resolution) and restored after.

    Args:
        segmenter: returns ``logits`` (the Segmenter contract); moved to ``device``, put in eval
            mode and restored to its previous mode afterwards.
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
        raise ValueError(
            f"{type(dataset).__name__} {dataset.split!r} at {dataset.root} is unlabelled; cannot evaluate"
        )
    rank, world_size = _rank_and_world_size()
    shard = torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))
    loader = torch.utils.data.DataLoader(shard, batch_size=1, num_workers=num_workers)
    confusion = ConfusionMatrix(dataset.num_classes, device=device)
    was_training = segmenter.training
    saved_transform = dataset.transform
    dataset.transform = eval_transform(size=input_size)
    segmenter.to(device).eval()
    try:
        for sample in tqdm(loader, desc="evaluate", unit="img", disable=not progress or rank != 0):
            images = sample["image"].to(device, non_blocking=True)
            labels = sample["mask"].to(device, non_blocking=True)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--dataset", required=True, choices=DATASETS.names(), help="dataset layout of --root"
    )
    parser.add_argument("--root", type=Path, required=True, help="dataset root folder")
    parser.add_argument("--split", default="val", help="split name or list file (default val)")
    parser.add_argument(
        "--output", type=Path, required=True, help="folder for metrics.json and metrics.md"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        choices=(16, 19),
        help="classes the checkpoint must predict (default: whatever it holds); 16 scores the SYNTHIA setting",
    )
    add_inference_arguments(parser)
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if present"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="image-decoding worker processes (default 2)"
    )


def main(args: argparse.Namespace) -> int:
    from crossregion.engine.dist import select_device
    from crossregion.models.checkpoint_io import load_segmenter

    check_output_folder(args.output)
    options = inference_options(args)
    device = select_device(args.device)
    segmenter, info = load_segmenter(
        args.checkpoint, format=args.format, num_classes=args.num_classes, device=device
    )
    dataset = build_dataset(args.dataset, args.root, args.split, num_classes=info["num_classes"])
    logger.info(
        "evaluating %s (%s, %s, %d classes) on %s %s: %d images",
        args.checkpoint,
        info["format"],
        info["backbone"],
        info["num_classes"],
        args.dataset,
        args.split,
        len(dataset),
    )
    metrics = evaluate_segmenter(
        segmenter, dataset, device=device, num_workers=args.workers, **options
    )
    write_cli_metrics(
        metrics,
        args,
        len(dataset),
        checkpoint=str(args.checkpoint),
        checkpoint_format=info["format"],
        backbone=info["backbone"],
    )
    return 0
