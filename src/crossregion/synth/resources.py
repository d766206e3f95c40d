"""The memory and disk a benchmark needs, checked before any file is written."""

from __future__ import annotations

import shutil
from pathlib import Path

# Measured on the generator: rendering one image holds about 30-95 bytes per pixel (numpy and
# PIL buffers), its two PNGs take under 2 bytes per pixel; each file also fills a disk block.
RENDER_BYTES_PER_PIXEL = 100
FILE_BYTES_PER_PIXEL = 2
BLOCK_BYTES = 4096


def check_resources(out_dir: Path, arguments: dict) -> None:
    """Refuse, before any file is written, a benchmark whose one image does not fit in the free
    memory or whose files do not fit on the disk, with the estimate and what there is.

    Raises:
        ValueError: not enough memory or disk.
    """
    pixels = arguments["height"] * arguments["width"]
    available = available_memory()
    needed = pixels * RENDER_BYTES_PER_PIXEL
    if available is not None and needed > available:
        raise ValueError(
            f"--height {arguments['height']} --width {arguments['width']}: rendering one image needs about "
            f"{size_text(needed)} of memory, and {size_text(available)} is available; choose a smaller size"
        )
    samples = arguments["source_images"] + arguments["target_train_images"] + arguments["target_val_images"]
    needed = samples * (pixels * FILE_BYTES_PER_PIXEL + 2 * BLOCK_BYTES)
    existing = next(parent for parent in (out_dir.absolute(), *out_dir.absolute().parents) if parent.exists())
    # Files already there are rewritten in place, or removed first (--force).
    present = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file()) if out_dir.is_dir() else 0
    free = shutil.disk_usage(existing).free
    if needed - present > free:
        raise ValueError(
            f"OUT_DIR {out_dir}: {samples} images of {arguments['height']}x{arguments['width']} need about "
            f"{size_text(needed)} of disk, and {size_text(free)} is free there; ask for fewer or smaller images"
        )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def size_text(count: int) -> str:
    value, unit = float(count), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"
