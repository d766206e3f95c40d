"""``crossregion export-checkpoint``: convert a checkpoint to the official FADA/CRA format."""

from __future__ import annotations

import argparse
from pathlib import Path

from crossregion.files import check_output_file
from crossregion.models.checkpoint_io import CHECKPOINT_FORMATS, export_official, load_segmenter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a crossregion checkpoint or an official FADA/CRA or IAST one")
    parser.add_argument("--output", type=Path, required=True, help="the official-format file to write")
    parser.add_argument("--format", choices=CHECKPOINT_FORMATS, default="auto", help="format of CHECKPOINT")
    parser.add_argument(
        "--ddp-prefix",
        action="store_true",
        help="prefix keys with 'module.' (official distributed training)",
    )


def main(args: argparse.Namespace) -> int:
    check_output_file(args.output)
    if args.output.exists() and args.checkpoint.exists() and args.output.samefile(args.checkpoint):
        raise ValueError(
            f"--output {args.output} is CHECKPOINT itself; the export would overwrite its input: name another file"
        )
    segmenter, info = load_segmenter(args.checkpoint, format=args.format)
    export_official(
        segmenter,
        args.output,
        discriminator=info["discriminator_state"],
        iteration=info["iteration"],
        ddp_prefix=args.ddp_prefix,
    )
    with_discriminator = " and model_D" if info["discriminator_state"] is not None else ""
    print(
        f"wrote {args.output}: {info['backbone']}, {info['num_classes']} classes, "
        f"iteration {info['iteration']}, feature_extractor + classifier{with_discriminator}"
    )
    return 0
