"""``crossregion predict``: segment image files and write ID maps, colour maps and overlays.

For every input image ``<stem>.<ext>`` the output folder gets, at the image's own size:
``<stem>_trainIds.png`` (the model's train IDs), ``<stem>_labelIds.png`` (Cityscapes label IDs,
what the official test server takes), ``<stem>_color.png`` (official Cityscapes palette) and
``<stem>_overlay.png`` (colours blended over the image).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from crossregion.data.datasets import IMAGE_SUFFIXES
from crossregion.data.labels import label_set_for
from crossregion.data.transforms import eval_transform
from crossregion.eval.inference import (
    add_checkpoint_arguments, add_inference_arguments, inference_options, predict_probs,
)
from crossregion.eval.visualize import colorize, overlay, save_png
from crossregion.files import check_output_folder

logger = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.5


def collect_images(paths: list[Path]) -> list[Path]:
    """Image files named directly or found (recursively) in folders, in a stable order.

    Raises:
        FileNotFoundError: a path does not exist, or nothing to predict was found.
        ValueError: two images share a stem, so their outputs would overwrite each other.
    """
    images: list[Path] = []
    for path in paths:
        if path.is_dir():
            images += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            images.append(path)
        else:
            raise FileNotFoundError(f"--images: {path} does not exist")
    if not images:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(str(p) for p in paths)}"
        )
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen and seen[image.stem] != image:
            raise ValueError(
                f"{seen[image.stem]} and {image} have the same stem, so their outputs would collide; "
                "predict them into different --output folders"
            )
        seen[image.stem] = image
    return list(dict.fromkeys(images))


def predict_image(
    segmenter: nn.Module,
    image: Image.Image,
    *,
    device: torch.device | str,
    input_size: tuple[int, int] | None = None,
    **inference: object,
) -> np.ndarray:
    """Train IDs of one image at its own size.

    Args:
        segmenter: in eval mode, on ``device``.
        image: an RGB image.
        input_size: ``(height, width)`` the image is resized to for inference; None keeps it.
        inference: ``flip``, ``scales``, ``window``, ``stride`` for ``predict_probs``.

    Returns:
        uint8 H×W train IDs.
    """
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    sample = eval_transform(size=input_size)({"image": pixels})
    probs = predict_probs(
        segmenter,
        sample["image"][None].to(device),
        output_size=(image.height, image.width),
        **inference,
    )
    return probs[0].argmax(dim=0).to(torch.uint8).cpu().numpy()


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
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if present"
    )


def main(args: argparse.Namespace) -> int:
    from crossregion.engine.dist import select_device
    from crossregion.models.checkpoint_io import load_segmenter

    check_output_folder(args.output)
    options = inference_options(args)
    input_size = options.pop("input_size")
    images = collect_images(args.images)
    device = select_device(args.device)
    segmenter, info = load_segmenter(args.checkpoint, format=args.format, device=device)
    label_set = label_set_for(info["num_classes"])
    to_label_id = label_set.train_id_to_cityscapes_id()
    for path in tqdm(images, desc="predict", unit="img"):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
        train_ids = predict_image(segmenter, image, device=device, input_size=input_size, **options)
        colour = colorize(train_ids, label_set.palette)
        save_png(train_ids, args.output / f"{path.stem}_trainIds.png")
        save_png(to_label_id[train_ids], args.output / f"{path.stem}_labelIds.png")
        save_png(colour, args.output / f"{path.stem}_color.png")
        save_png(overlay(image, colour, OVERLAY_ALPHA), args.output / f"{path.stem}_overlay.png")
    print(
        f"wrote predictions of {len(images)} image(s) ({info['num_classes']} classes) to {args.output}"
    )
    return 0
