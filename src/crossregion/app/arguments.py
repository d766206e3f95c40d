"""Command-line options shared by several commands (argparse lives in ``app/`` and ``cli.py`` only)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossregion.data.datasets import DATASETS
from crossregion.eval.metrics import summary_line, write_metrics
from crossregion.models.checkpoint_io import CHECKPOINT_FORMATS


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options shared by ``evaluate`` and ``predict``: ``--checkpoint`` and its ``--format``."""
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="a crossregion checkpoint or an official FADA/CRA, IAST or ProDA one",
    )
    parser.add_argument(
        "--format",
        choices=CHECKPOINT_FORMATS,
        default="auto",
        help="checkpoint format (default: detected from the file)",
    )


def add_dataset_arguments(
    parser: argparse.ArgumentParser,
    *,
    split_default: str,
    root_help: str = "dataset root folder",
    split_help: str | None = None,
) -> None:
    """``--dataset``, ``--root`` and ``--split``: the images a command reads (``build_dataset``)."""
    parser.add_argument("--dataset", required=True, choices=DATASETS.names(), help="dataset layout of --root")
    parser.add_argument("--root", type=Path, required=True, help=root_help)
    parser.add_argument(
        "--split", default=split_default, help=split_help or f"split name or list file (default {split_default})"
    )


def add_width_height_argument(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    """An option that takes a size as two integers ``W H``; ``height_width`` reads it."""
    parser.add_argument(flag, nargs=2, type=int, metavar=("W", "H"), help=help_text)


def height_width(width_height: Sequence[int] | None, option: str) -> tuple[int, int] | None:
    """A ``W H`` option's value as (height, width), the order tensors use; ``None`` when not given.

    Command-line sizes are W×H (like image tools); ``option`` names the value in the error.
    """
    if width_height is None:
        return None
    width, height = width_height
    if width < 1 or height < 1:
        raise ValueError(f"{option} must be positive, got {width} {height}")
    return (height, width)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``evaluate`` and ``predict``: input size, flip, scales, window."""
    add_width_height_argument(
        parser,
        "--input-size",
        "resize each image to W×H before inference (FADA/CRA: 1024 512 for CDA, 2048 1024 for CRA); "
        "default: the image size",
    )
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument(
        "--scales",
        type=_parse_scales,
        default=(1.0,),
        metavar="S1,S2,...",
        help="comma-separated input scales whose softmax maps are averaged, e.g. 0.75,1.0,1.25 (default 1.0)",
    )
    add_width_height_argument(parser, "--window", "sliding-window crop size")
    add_width_height_argument(
        parser, "--stride", "sliding-window step (needs --window; default two thirds of the window)"
    )


def _parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales takes comma-separated numbers like 0.75,1.0,1.25, got {text!r}"
        ) from None
    if any(scale <= 0 for scale in scales):
        raise argparse.ArgumentTypeError(f"--scales must be positive, got {text!r}")
    return scales


def inference_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for ``predict_probs`` and the input size, from parsed options.

    Returns:
        ``input_size`` (H, W) or ``None``, ``flip``, ``scales``, ``window`` and ``stride``.
    """
    if args.stride is not None and args.window is None:
        raise ValueError("--stride needs --window W H")
    return {
        "input_size": height_width(args.input_size, "sizes"),
        "flip": args.flip,
        "scales": tuple(args.scales),
        "window": height_width(args.window, "sizes"),
        "stride": height_width(args.stride, "sizes"),
    }


def write_cli_metrics(
    metrics: dict[str, Any], args: argparse.Namespace, num_images: int, **model_settings: Any
) -> None:
    """The end of ``evaluate`` and ``evaluate-predictions``: record what was scored, write, print.

    ``metrics["settings"]`` becomes ``model_settings`` (what made the predictions), then
    ``args.dataset``, ``args.root`` and ``args.split``, then the settings already there; the
    files go to ``args.output`` (``write_metrics``) and one summary line is printed.
    """
    metrics["settings"] = {
        **model_settings,
        "dataset": args.dataset,
        "root": str(args.root),
        "split": args.split,
        **metrics["settings"],
    }
    json_path, markdown_path = write_metrics(metrics, args.output)
    print(f"{summary_line(metrics)} on {num_images} images; wrote {json_path} and {markdown_path}")
