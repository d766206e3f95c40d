"""``crossregion data check``: validate a dataset folder and print its class histogram."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossregion.data.check import check_dataset
from crossregion.data.datasets import DATASETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=DATASETS.names(), help="dataset layout")
    parser.add_argument("--root", required=True, type=Path, help="dataset root folder")
    parser.add_argument(
        "--split",
        default="train",
        help="train/val/test for Cityscapes; all/train or a list file of names for the others",
    )
    parser.add_argument(
        "--num-classes", type=int, default=19, choices=(19, 16), help="19 (GTA5 setting) or 16 (SYNTHIA)"
    )
    parser.add_argument(
        "--id-map", type=Path, default=None, help="folder dataset only: YAML/JSON {on_disk_id: train_id}"
    )


def main(args: argparse.Namespace) -> int:
    report = check_dataset(args.dataset, args.root, args.split, num_classes=args.num_classes, id_map=args.id_map)
    print(report.format())
    return 0 if report.usable else 1
