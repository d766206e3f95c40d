"""The official on-disk layouts the benchmark is written in (``docs/architecture.md``): file names
and label encodings of GTA5, SYNTHIA and Cityscapes, with fixed PNG encoder settings."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import png
from PIL import Image

from crossregion.files import write_bytes_atomically
from crossregion.synth.label_ids import COLOURISE_LUT, ID

SOURCE_LAYOUTS = ("gta5", "synthia")
# Fictional cities; train and val cities are disjoint, as in Cityscapes.
TRAIN_CITIES = ("aldport", "brenvik", "corstadt")
VAL_CITIES = ("dunmere", "elsburg")
# Cityscapes annotates frame 19 of each 30-frame snippet; the file names keep that convention.
ANNOTATED_FRAME = 19

# Fixed encoder settings: part of the byte-identical guarantee.
PNG_COMPRESS_LEVEL = 6

# Cityscapes label ID -> SYNTHIA class ID (GT/LABELS channel 0); void IDs -> 0, parking -> 13.
CITYSCAPES_ID_TO_SYNTHIA_ID = {
    ID["road"]: 3,
    ID["sidewalk"]: 4,
    ID["building"]: 2,
    ID["wall"]: 21,
    ID["fence"]: 5,
    ID["pole"]: 7,
    ID["traffic light"]: 15,
    ID["traffic sign"]: 9,
    ID["vegetation"]: 6,
    ID["terrain"]: 16,
    ID["sky"]: 1,
    ID["person"]: 10,
    ID["rider"]: 17,
    ID["car"]: 8,
    ID["truck"]: 18,
    ID["bus"]: 19,
    ID["train"]: 20,
    ID["motorcycle"]: 12,
    ID["bicycle"]: 11,
    ID["parking"]: 13,
}


def save_png(array: np.ndarray, path: Path, palette: list[int] | None = None) -> None:
    """An RGB or greyscale PNG, or a P-mode one with ``palette``, written atomically."""
    if palette is None:
        image = Image.fromarray(array)
    else:
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    write_bytes_atomically(path, buffer.getbuffer())


def save_synthia_label(labels: np.ndarray, path: Path) -> None:
    """16-bit 3-channel PNG: SYNTHIA class ID in channel 0, instance ID 0 in channel 1, 0 in 2."""
    lut = np.zeros(256, dtype=np.uint16)
    for cityscapes_id, synthia_id in CITYSCAPES_ID_TO_SYNTHIA_ID.items():
        lut[cityscapes_id] = synthia_id
    channels = np.zeros(labels.shape + (3,), dtype=np.uint16)
    channels[..., 0] = lut[labels]
    height, width = labels.shape
    writer = png.Writer(width=width, height=height, bitdepth=16, greyscale=False, compression=PNG_COMPRESS_LEVEL)
    buffer = io.BytesIO()
    writer.write(buffer, channels.reshape(height, width * 3))
    write_bytes_atomically(path, buffer.getbuffer())


# The palette of GTA5's P-mode label PNGs: the Cityscapes colours.
GTA5_PALETTE = COLOURISE_LUT.ravel().tolist()


def cityscapes_stem(city: str, sequence: int) -> str:
    """``<city>_<seq:06d>_<frame:06d>``, the Cityscapes file stem."""
    return f"{city}_{sequence:06d}_{ANNOTATED_FRAME:06d}"


def benchmark_files(out_dir: Path, arguments: dict) -> Iterator[tuple[str, str, int, Path, Path]]:
    """(domain, split, index, image path, label path) of every sample a benchmark of ``arguments``
    holds, in the order they are written: the one place that names the files."""
    layout = arguments["source_layout"]
    if layout == "gta5":
        image_dir, label_dir = out_dir / "gta5" / "images", out_dir / "gta5" / "labels"
    else:
        image_dir, label_dir = out_dir / "synthia" / "RGB", out_dir / "synthia" / "GT" / "LABELS"
    for index in range(arguments["source_images"]):
        # GTA5 numbers from 00001, SYNTHIA from 0000000.
        name = f"{index + 1:05d}.png" if layout == "gta5" else f"{index:07d}.png"
        yield "source", "train", index, image_dir / name, label_dir / name
    root = out_dir / "cityscapes"
    for split, count, cities in (
        ("train", arguments["target_train_images"], TRAIN_CITIES),
        ("val", arguments["target_val_images"], VAL_CITIES),
    ):
        for index in range(count):
            city = cities[index % len(cities)]
            stem = cityscapes_stem(city, index // len(cities))
            yield (
                "target",
                split,
                index,
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
            )
