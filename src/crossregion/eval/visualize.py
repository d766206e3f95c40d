"""Pictures: colour label maps, overlays, entropy maps and the paper's Fig. 3 panels.

NumPy and PIL only (no matplotlib). Never imported by a training step; hooks call it on rank 0.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from crossregion.data.labels import IGNORE_INDEX
from crossregion.files import write_bytes_atomically

ImageLike = np.ndarray | torch.Tensor | Image.Image

IGNORE_COLOUR = (0, 0, 0)
TRUSTED_COLOUR = (255, 255, 255)
UNTRUSTED_COLOUR = (0, 0, 0)
# Pixels without a pseudo label or entropy (padding, ignore) in trusted and entropy maps.
UNSCORED_COLOUR = (128, 128, 128)

# Anchor colours of the viridis colour map at 0, 1/8, ..., 1 (perceptually uniform, readable in
# grey-scale print); the 256-entry table interpolates linearly between them.
_VIRIDIS_ANCHORS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)


def _colour_table() -> np.ndarray:
    positions = np.linspace(0.0, 1.0, len(_VIRIDIS_ANCHORS))
    samples = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(samples, positions, _VIRIDIS_ANCHORS[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=1)).astype(np.uint8)


ENTROPY_COLOURS = _colour_table()


def _to_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def colorize(train_ids: np.ndarray | torch.Tensor, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Colours a train-ID map with a palette; ``IGNORE_INDEX`` and IDs beyond the palette are black.

    Shape:
        train_ids: H×W integers. Output: H×W×3 uint8.
    """
    ids = _to_numpy(train_ids)
    if ids.ndim != 2:
        raise ValueError(f"colorize expects an H×W train-ID map, got shape {ids.shape}")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:] = IGNORE_COLOUR
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    ids = ids.astype(np.int64)
    ids = np.where((ids >= 0) & (ids < len(palette)), ids, IGNORE_INDEX)
    return table[ids]


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """An H×W×3 uint8 array from a PIL image, an H×W×3 array or a 3×H×W uint8 tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = _to_numpy(image)
    if isinstance(image, torch.Tensor) and array.ndim == 3 and array.shape[0] == 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H×W×3 array or 3×H×W tensor), got {array.shape} {array.dtype}")
    return array


def overlay(image: ImageLike, colour: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a colour map over an image: ``(1 - alpha) * image + alpha * colour``.

    Shape:
        image: H×W×3 (or 3×H×W tensor); colour: H×W×3 uint8. Output: H×W×3 uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_array(image)
    if rgb.shape != colour.shape:
        raise ValueError(f"image {rgb.shape} and colour map {colour.shape} differ in size")
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.round(blended).astype(np.uint8)


def render_entropy(entropy: np.ndarray | torch.Tensor, vmax: float | None = None) -> np.ndarray:
    """Renders an entropy map with the viridis colour map: dark blue = certain, yellow = uncertain.

    Args:
        entropy: non-negative entropy; negative values (the -1 ignore value) are drawn grey.
        vmax: entropy drawn at the top of the colour map; default the largest value present.
            Use 1.0 for the normalised entropy e = H / (K ln K), so maps are comparable.

    Shape:
        entropy: H×W. Output: H×W×3 uint8.
    """
    values = _to_numpy(entropy).astype(np.float64)
    if values.ndim != 2:
        raise ValueError(f"render_entropy expects an H×W map, got shape {values.shape}")
    valid = values >= 0
    if vmax is None:
        vmax = float(values[valid].max()) if valid.any() else 1.0
    if vmax <= 0:
        vmax = 1.0
    levels = np.clip(np.round(values / vmax * 255), 0, 255).astype(np.int64)
    rgb = ENTROPY_COLOURS[levels]
    rgb[~valid] = UNSCORED_COLOUR
    return rgb


def render_trusted(trusted: np.ndarray | torch.Tensor, scored: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """The trusted/untrusted map of Fig. 3: white trusted, black untrusted, grey not scored.

    Shape:
        trusted, scored: H×W booleans. Output: H×W×3 uint8.
    """
    trusted = _to_numpy(trusted).astype(bool)
    rgb = np.empty(trusted.shape + (3,), dtype=np.uint8)
    rgb[trusted] = TRUSTED_COLOUR
    rgb[~trusted] = UNTRUSTED_COLOUR
    if scored is not None:
        rgb[~_to_numpy(scored).astype(bool)] = UNSCORED_COLOUR
    return rgb


def write_panel(
    path: str | Path,
    columns: Sequence[tuple[str, Sequence[ImageLike]]],
    *,
    gap: int = 4,
) -> Path:
    """Writes a grid of images with a title over each column (the paper's Fig. 3 layout).

    Fig. 3 uses the columns image | prediction A | trusted/untrusted map | prediction B |
    ground truth, one row per image. Each cell is resized (nearest neighbour, so label colours
    stay pure) to the size of the first cell of its row.

    Args:
        path: PNG file to write; parent folders are created.
        columns: ``(title, images)`` per column, one image per row; every column must have the
            same number of rows. Images are PIL images, H×W×3 uint8 arrays or 3×H×W tensors.
        gap: white pixels between cells.

    Returns:
        The path written.
    """
    if not columns:
        raise ValueError("write_panel needs at least one column")
    num_rows = len(columns[0][1])
    if num_rows == 0 or any(len(images) != num_rows for _, images in columns):
        counts = {title: len(images) for title, images in columns}
        raise ValueError(f"every column needs the same, non-zero number of images; got {counts}")
    rows = []
    for row in range(num_rows):
        cells = [Image.fromarray(to_rgb_array(images[row])) for _, images in columns]
        size = cells[0].size
        rows.append([cell if cell.size == size else cell.resize(size, Image.NEAREST) for cell in cells])
    font = ImageFont.load_default()
    title_height = max(_text_size(font, title)[1] for title, _ in columns) + 2 * gap
    cell_widths = [max(rows[r][c].size[0] for r in range(num_rows)) for c in range(len(columns))]
    row_heights = [row[0].size[1] for row in rows]
    panel = Image.new(
        "RGB",
        (
            sum(cell_widths) + gap * (len(columns) + 1),
            title_height + sum(row_heights) + gap * num_rows,
        ),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(panel)
    left = gap
    for column, (title, _) in enumerate(columns):
        text_width = _text_size(font, title)[0]
        draw.text(
            (left + max(0, (cell_widths[column] - text_width) // 2), gap),
            title,
            fill=(0, 0, 0),
            font=font,
        )
        top = title_height
        for row in range(num_rows):
            panel.paste(rows[row][column], (left, top))
            top += row_heights[row] + gap
        left += cell_widths[column] + gap
    path = Path(path)
    buffer = io.BytesIO()
    panel.save(buffer, format="PNG")
    write_bytes_atomically(path, buffer.getbuffer())
    return path


def _text_size(font: ImageFont.ImageFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Writes a uint8 H×W (single-channel) or H×W×3 (RGB) array as PNG."""
    path = Path(path)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    write_bytes_atomically(path, buffer.getbuffer())
    return path
