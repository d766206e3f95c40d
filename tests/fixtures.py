"""Tiny datasets written to disk in each official layout, for tests (``from fixtures import ...``).

Each writer fills labels with random IDs drawn from ``label_ids`` (valid on-disk IDs of that
dataset by default), seeded, so a test can compute what it expects. Sizes are ``(height, width)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import png
from PIL import Image

from crossregion.data.labels import CITYSCAPES_LABELS, SYNTHIA_CLASS_NAMES

CITYSCAPES_IDS = tuple(label.id for label in CITYSCAPES_LABELS if label.id >= 0)
SYNTHIA_IDS = tuple(SYNTHIA_CLASS_NAMES)


def random_image(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A uint8 H×W×3 image of random colours."""
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def random_label(size: tuple[int, int], label_ids, rng: np.random.Generator) -> np.ndarray:
    """A uint8 H×W label of IDs drawn from ``label_ids``."""
    return rng.choice(np.asarray(label_ids, dtype=np.uint8), size=size)


def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_label_png(path: Path, label: np.ndarray, palettised: bool = False) -> None:
    """Single-channel 8-bit label PNG; ``palettised`` writes mode ``P`` the way GTA5 does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.ascontiguousarray(label, dtype=np.uint8)
    if palettised:
        image = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
        image.putpalette([value for i in range(256) for value in (i, 255 - i, (7 * i) % 256)])
    else:
        image = Image.fromarray(label)
    image.save(path)


def write_synthia_label(path: Path, class_ids: np.ndarray) -> None:
    """16-bit 3-channel PNG with the class ID in channel 0 and an instance-like ID in channel 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = class_ids.shape
    pixels = np.zeros((height, width, 3), dtype=np.uint16)
    pixels[:, :, 0] = class_ids
    pixels[:, :, 1] = 1000 + np.arange(width, dtype=np.uint16)[None, :]  # high bytes set on purpose
    writer = png.Writer(width=width, height=height, greyscale=False, bitdepth=16)
    with path.open("wb") as f:
        writer.write(f, pixels.reshape(height, width * 3).tolist())


def write_gta5(
    root: Path, n: int = 3, size: tuple[int, int] = (8, 12), *, label_ids=CITYSCAPES_IDS, seed: int = 0
) -> Path:
    """``root/images/00001.png ...`` and palettised ``root/labels/00001.png ...``."""
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        write_rgb(root / "images" / f"{i:05d}.png", random_image(size, rng))
        write_label_png(root / "labels" / f"{i:05d}.png", random_label(size, label_ids, rng), palettised=True)
    return root


def write_synscapes(
    root: Path, n: int = 3, size: tuple[int, int] = (8, 12), *, label_ids=CITYSCAPES_IDS, seed: int = 0
) -> Path:
    """``root/img/rgb/1.png ...`` and ``root/img/class/1.png ...`` (Cityscapes label IDs)."""
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        write_rgb(root / "img" / "rgb" / f"{i}.png", random_image(size, rng))
        write_label_png(root / "img" / "class" / f"{i}.png", random_label(size, label_ids, rng))
    return root


def write_synthia(
    root: Path, n: int = 3, size: tuple[int, int] = (8, 12), *, label_ids=SYNTHIA_IDS, seed: int = 0
) -> Path:
    """``root/RGB/0000000.png ...`` and 16-bit ``root/GT/LABELS/0000000.png ...``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_rgb(root / "RGB" / f"{i:07d}.png", random_image(size, rng))
        write_synthia_label(root / "GT" / "LABELS" / f"{i:07d}.png", random_label(size, label_ids, rng))
    return root


def write_cityscapes(
    root: Path,
    splits=("train", "val"),
    cities=("aachen", "bremen"),
    per_city: int = 2,
    size: tuple[int, int] = (8, 16),
    *,
    label_ids=CITYSCAPES_IDS,
    seed: int = 0,
) -> Path:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``gtFine/.../*_gtFine_labelIds.png``.

    The ``test`` split gets images only, like the public release's withheld labels.
    """
    rng = np.random.default_rng(seed)
    for split in splits:
        for city in cities:
            for frame in range(per_city):
                stem = f"{city}_000000_{frame:06d}"
                write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", random_image(size, rng))
                if split != "test":
                    label = random_label(size, label_ids, rng)
                    write_label_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
    return root


def write_folder(
    root: Path,
    n: int = 3,
    size: tuple[int, int] = (8, 12),
    *,
    label_ids=(0, 1, 2, 255),
    with_masks: bool = True,
    seed: int = 0,
) -> Path:
    """``root/images/img<i>.jpg`` and (optionally) ``root/masks/img<i>.png``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_rgb(root / "images" / f"img{i}.jpg", random_image(size, rng))
        if with_masks:
            write_label_png(root / "masks" / f"img{i}.png", random_label(size, label_ids, rng))
    return root
