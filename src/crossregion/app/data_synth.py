"""``crossregion data synth OUT_DIR``: write the embedded synthetic benchmark."""

from __future__ import annotations

import argparse
import logging

from crossregion.synth.benchmark import ARGUMENT_KEYS, DEFAULT_ARGUMENTS, generate_into
from crossregion.synth.layouts import SOURCE_LAYOUTS

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write gta5/ (or synthia/) and cityscapes/ into")
    defaults = DEFAULT_ARGUMENTS
    parser.add_argument(
        "--source-images", type=int, default=defaults["source_images"], help="source (GTA5-like) images"
    )
    parser.add_argument(
        "--target-train-images",
        type=int,
        default=defaults["target_train_images"],
        help="target train images (Cityscapes-like)",
    )
    parser.add_argument(
        "--target-val-images", type=int, default=defaults["target_val_images"], help="target val images"
    )
    parser.add_argument("--height", type=int, default=defaults["height"], help="image height in pixels")
    parser.add_argument("--width", type=int, default=defaults["width"], help="image width in pixels")
    parser.add_argument(
        "--seed", type=int, default=defaults["seed"], help="benchmark seed; same arguments give identical files"
    )
    parser.add_argument(
        "--source-layout",
        choices=SOURCE_LAYOUTS,
        default="gta5",
        help="write the source in the GTA5 (19 classes) or SYNTHIA (16 classes) layout",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="empty OUT_DIR first when it holds anything but a benchmark of these arguments",
    )


def main(args: argparse.Namespace) -> int:
    summary = generate_into(args.out_dir, {key: getattr(args, key) for key in ARGUMENT_KEYS}, force=args.force)
    logger.info(
        "wrote %d source (%s layout) and %d+%d target images to %s",
        summary["source_images"],
        summary["source_layout"],
        summary["target_train_images"],
        summary["target_val_images"],
        args.out_dir,
    )
    return 0
