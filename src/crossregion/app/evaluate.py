"""``crossregion evaluate``: score a checkpoint on a labelled split (``eval.evaluate``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from crossregion.app.arguments import (
    add_checkpoint_arguments,
    add_dataset_arguments,
    add_inference_arguments,
    inference_options,
    write_cli_metrics,
)
from crossregion.data.datasets import build_dataset
from crossregion.eval.evaluate import evaluate_segmenter
from crossregion.files import check_writable_folder

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    add_dataset_arguments(parser, split_default="val")
    parser.add_argument("--output", type=Path, required=True, help="folder for metrics.json and metrics.md")
    parser.add_argument(
        "--num-classes",
        type=int,
        choices=(16, 19),
        help="classes the checkpoint must predict (default: whatever it holds); 16 scores the SYNTHIA setting",
    )
    add_inference_arguments(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if present")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (default 2)")


def main(args: argparse.Namespace) -> int:
    from crossregion.dist import select_device
    from crossregion.models.checkpoint_io import load_segmenter

    check_writable_folder(args.output)
    options = inference_options(args)
    device = select_device(args.device)
    segmenter, info = load_segmenter(args.checkpoint, format=args.format, num_classes=args.num_classes, device=device)
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
    metrics = evaluate_segmenter(segmenter, dataset, device=device, num_workers=args.workers, **options)
    write_cli_metrics(
        metrics,
        args,
        len(dataset),
        checkpoint=str(args.checkpoint),
        checkpoint_format=info["format"],
        backbone=info["backbone"],
    )
    return 0
