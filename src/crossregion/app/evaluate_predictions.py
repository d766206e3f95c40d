"""``crossregion evaluate-predictions``: score saved prediction PNGs (``eval.predictions``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossregion.app.arguments import add_dataset_arguments, write_cli_metrics
from crossregion.data.datasets import build_dataset
from crossregion.eval.predictions import ID_TYPES, evaluate_predictions
from crossregion.files import check_output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser, split_default="val")
    parser.add_argument(
        "--predictions",
        type=Path,
        required=True,
        help="folder of prediction PNGs (<image stem>*.png)",
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for metrics.json and metrics.md")
    parser.add_argument(
        "--id-type",
        choices=ID_TYPES,
        default="auto",
        help="what the PNGs hold: train IDs, Cityscapes label IDs, or auto-detect (default)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        choices=(16, 19),
        default=19,
        help="19 (Cityscapes) or 16 (SYNTHIA setting: terrain, truck, train ignored); default 19",
    )


def main(args: argparse.Namespace) -> int:
    check_output_folder(args.output)
    dataset = build_dataset(args.dataset, args.root, args.split, num_classes=args.num_classes)
    metrics, decision = evaluate_predictions(dataset, args.predictions, id_type=args.id_type)
    print(f"reading predictions as {decision.id_type} IDs: {decision.reason}")
    write_cli_metrics(metrics, args, len(dataset))
    return 0
