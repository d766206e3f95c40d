"""``crossregion predict``: segment image files and write ID maps, colour maps and overlays.

For every input image ``<stem>.<ext>`` the output folder gets, at the image's own size:
``<stem>_trainIds.png`` (the model's train IDs), ``<stem>_labelIds.png`` (Cityscapes label IDs,
what the official test server takes), ``<stem>_color.png`` (official Cityscapes palette) and
``<stem>_overlay.png`` (colours blended over the image).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from crossregion.data.datasets import IMAGE_SUFFIXES
from crossregion.data.labels import label_set_for
from crossregion.data.transforms import eval_transform
from crossregion.dist import unwrap
from crossregion.eval.inference import predict_probs
from crossregion.eval.visualize import colorize, overlay, save_png

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
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            dangling = [p for p in found if not p.exists()]
            if dangling:
                listing = ", ".join(map(str, dangling[:5])) + (" ..." if len(dangling) > 5 else "")
                raise FileNotFoundError(
                    f"--images: {len(dangling)} link(s) to a missing file ({listing}); fix or remove them"
                )
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise FileNotFoundError(f"--images: {path} does not exist")
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(str(p) for p in paths)}")
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
        segmenter: in eval mode, on ``device``; its ``input_norm`` says how the image is normalised.
        image: an RGB image.
        input_size: ``(height, width)`` the image is resized to for inference; None keeps it.
        inference: ``flip``, ``scales``, ``window``, ``stride`` for ``predict_probs``.

    Returns:
        uint8 H×W train IDs.
    """
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    sample = eval_transform(size=input_size, input_norm=unwrap(segmenter).input_norm)({"image": pixels})
    probs = predict_probs(
        segmenter,
        sample["image"][None].to(device),
        output_size=(image.height, image.width),
        **inference,
    )
    return probs[0].argmax(dim=0).to(torch.uint8).cpu().numpy()


def write_predictions(
    segmenter: nn.Module,
    images: Sequence[Path],
    output: Path,
    *,
    num_classes: int,
    device: torch.device,
    input_size: tuple[int, int] | None = None,
    **options: Any,
) -> None:
    """For each image: ``<stem>_trainIds.png``, ``_labelIds.png``, ``_color.png`` and ``_overlay.png``.

    ``options`` are ``predict_image``'s inference options (flip, scales, window, stride).
    """
    label_set = label_set_for(num_classes)
    to_label_id = label_set.train_id_to_cityscapes_id()
    for path in tqdm(images, desc="predict", unit="img"):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
        train_ids = predict_image(segmenter, image, device=device, input_size=input_size, **options)
        colour = colorize(train_ids, label_set.palette)
        save_png(train_ids, output / f"{path.stem}_trainIds.png")
        save_png(to_label_id[train_ids], output / f"{path.stem}_labelIds.png")
        save_png(colour, output / f"{path.stem}_color.png")
        save_png(overlay(image, colour, OVERLAY_ALPHA), output / f"{path.stem}_overlay.png")
