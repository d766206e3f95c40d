"""``crossregion predict``: write predictions for images (``eval.predict``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossregion.app.arguments import (
    add_checkpoint_arguments,
    add_inference_arguments,
    inference_options,
)
from crossregion.eval.predict import collect_images, write_predictions
from crossregion.files import check_output_folder, check_output_outside


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        required=True,
        metavar="PATH",
        help="image files and/or folders (searched recursively for .png/.jpg/.jpeg)",
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for the written PNGs")
    add_inference_arguments(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if present")


def main(args: argparse.Namespace) -> int:
    from crossregion.dist import select_device
    from crossregion.models.checkpoint_io import load_segmenter

    check_output_folder(args.output)
    for folder in args.images:
        if folder.is_dir():
            check_output_outside(
                args.output, folder, "--output", "--images", "the next run would read its predictions as images"
            )
    options = inference_options(args)
    input_size = options.pop("input_size")
    images = collect_images(args.images)
    device = select_device(args.device)
    segmenter, info = load_segmenter(args.checkpoint, format=args.format, device=device)
    write_predictions(
        segmenter, images, args.output, num_classes=info["num_classes"], device=device, input_size=input_size, **options
    )
    print(f"wrote predictions of {len(images)} image(s) ({info['num_classes']} classes) to {args.output}")
    return 0
