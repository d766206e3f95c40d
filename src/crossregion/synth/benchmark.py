"""The embedded synthetic benchmark: a GTA5-like source and a Cityscapes-like target.

``crossregion data synth OUT_DIR ...`` renders street scenes with a pinhole camera over a
flat ground plane (road converging to a vanishing point, sidewalks with curbs, facades,
walls, fences, greenery, poles with lights and signs, people, riders, vehicles), drawn back
to front so nearer objects occlude farther ones. Both domains share the scene grammar, so
shape and layout carry the same information in both; they differ in appearance. The source is
rendered: saturated colours drawn per image around a base palette (domain randomisation, with
skies from blue to overcast and cars of many colours), and surface texture at 0.8 of the
target's amplitude. The target is photographed: the source's hues at half their saturation,
value-noise texture, uneven light, cast shadows, haze that grows toward the horizon with a
strength drawn per image (so far regions of some images are uncertain next to clear
foregrounds), blur, noise and JPEG; and it has its own class frequencies and object scales
(longer focal length, lower camera, more greenery and people).

Generator version 2 sized the scene for a stride-8 segmenter at 80x160 to 128x256: thin objects
(poles, signs, lights, people, two-wheelers) are drawn wider than life and no farther than
``SPEC.object_far_z``, and trains, trucks, buses and two-wheelers appear often enough for every
one of the 19 classes to be learnable from a few hundred images (docs/benchmarks.md measures the
oracle and the domain gap this gives).

This module writes benchmarks (generate, check and prepare the output folder); the rest of
``synth/`` draws them: ``spec.py`` (``BenchmarkSpec``: the constants that shape the domain gap),
``styles.py`` (each domain's scene statistics and palette), ``geometry.py`` (camera and canvas),
``scene.py`` (one image's shared drawing state), ``street.py``, ``objects.py`` and
``vehicles.py`` (what is drawn), ``photo.py`` (texture and the target's camera), ``render.py``
(one image), ``layouts.py`` (file names and encodings), ``resources.py`` (memory and disk checks).

Files use the official layouts (``docs/architecture.md``), so the demo runs through the
same loaders as real data:

    OUT_DIR/gta5/images/00001.png, OUT_DIR/gta5/labels/00001.png   (P-mode, label IDs)
    OUT_DIR/synthia/RGB/0000000.png, OUT_DIR/synthia/GT/LABELS/0000000.png  (16-bit, ch 0)
    OUT_DIR/cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    OUT_DIR/cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png
    OUT_DIR/synth.json

Every image has its own ``numpy`` Generator seeded from (seed, domain, split, index), and
PNG/JPEG encoder settings are fixed, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from crossregion import __version__
from crossregion.files import (
    check_output_folder,
    is_temp_file,
    remove_stale_temp_files,
    write_text_atomically,
)
from crossregion.synth.label_ids import colourise
from crossregion.synth.layouts import (
    GTA5_PALETTE,
    SOURCE_LAYOUTS,
    benchmark_files,
    save_png,
    save_synthia_label,
)
from crossregion.synth.render import render_sample
from crossregion.synth.resources import check_resources

logger = logging.getLogger(__name__)

SUMMARY_FILE = "synth.json"
# Written before the first image and removed after synth.json: a folder holding it is a run that
# was interrupted, and may be continued by the same arguments.
RUNNING_FILE = ".synth-running.json"
# The arguments of generate_benchmark, as synth.json records them.
ARGUMENT_KEYS = (
    "source_layout",
    "source_images",
    "target_train_images",
    "target_val_images",
    "height",
    "width",
    "seed",
)

# Bump when the rendering (or SPEC) changes, so stale benchmarks can be told apart (written to synth.json).
GENERATOR_VERSION = 2

# The benchmark `crossregion data synth` writes by default, and the one the demo and the accuracy
# benchmarks run on (their presets are sized for it: docs/benchmarks.md).
DEFAULT_ARGUMENTS = {
    "source_images": 1000,
    "target_train_images": 500,
    "target_val_images": 200,
    "height": 80,
    "width": 160,
    "seed": 0,
}


def validate_arguments(arguments: dict) -> None:
    """Raise ``ValueError`` for arguments (keyed by ``ARGUMENT_KEYS``) that ``generate_benchmark``
    cannot render, before any file is touched."""
    if arguments["source_layout"] not in SOURCE_LAYOUTS:
        raise ValueError(f"--source-layout must be one of {SOURCE_LAYOUTS}, got {arguments['source_layout']!r}")
    for key in ("source_images", "target_train_images", "target_val_images"):
        if arguments[key] < 1:  # every split is read by the commands the benchmark is for
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {arguments[key]}")
    height, width = arguments["height"], arguments["width"]
    if height < 16 or width < 16:
        raise ValueError(f"--height and --width must be at least 16 pixels, got {height}x{width}")


def generate_benchmark(
    out_dir: str | Path,
    *,
    source_images: int,
    target_train_images: int,
    target_val_images: int,
    height: int,
    width: int,
    seed: int,
    source_layout: str = "gta5",
) -> dict:
    """Write the source and target domains under ``out_dir``; returns what ``synth.json`` holds.

    Raises:
        ValueError: a count is negative, the size is too small, or the layout is unknown.
    """
    arguments = {
        "source_layout": source_layout,
        "source_images": source_images,
        "target_train_images": target_train_images,
        "target_val_images": target_val_images,
        "height": height,
        "width": width,
        "seed": seed,
    }
    validate_arguments(arguments)
    out_dir = Path(out_dir)
    for domain, split, index, image_path, label_path in benchmark_files(out_dir, arguments):
        image, labels = render_sample(seed, domain, split, index, height, width)
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        save_png(image, image_path)
        if domain == "target":
            save_png(labels, label_path)
        elif source_layout == "gta5":
            save_png(labels, label_path, palette=GTA5_PALETTE)
        else:
            save_synthia_label(labels, label_path)

    summary = {"generator_version": GENERATOR_VERSION, "crossregion_version": __version__, **arguments}
    write_text_atomically(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def holds_only_a_benchmark(out_dir: Path) -> bool:
    """True when every file under ``out_dir`` is one a benchmark of its recorded arguments consists
    of (or the marker or temp file of its run): a folder this generator wrote and nobody added to,
    which may be replaced without losing anyone's files."""
    recorded = _recorded_arguments(out_dir)
    if recorded is None or recorded.get("source_layout") not in SOURCE_LAYOUTS:
        return False
    try:
        expected = {path for _, _, _, *paths in benchmark_files(out_dir, recorded) for path in paths}
    except (TypeError, ValueError):  # counts that are not numbers: not a record this generator wrote
        return False
    expected |= {out_dir / SUMMARY_FILE, out_dir / RUNNING_FILE}
    folders = {parent for path in expected for parent in path.parents}
    return all(
        (path in folders if path.is_dir() and not path.is_symlink() else path in expected or is_temp_file(path))
        for path in out_dir.rglob("*")
    )


def save_sample_figure(path: str | Path, *, height: int = 256, width: int = 512, seed: int = 0) -> None:
    """A 2x2 figure for the README: source and target images (left) with colourised labels (right)."""
    rows = []
    for domain in ("source", "target"):
        image, labels = render_sample(seed, domain, "train", 0, height, width)
        gap = np.full((height, 4, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([image, gap, colourise(labels)], axis=1))
    figure = np.concatenate([rows[0], np.full((4, rows[0].shape[1], 3), 255, np.uint8), rows[1]], axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_png(figure, Path(path))


def prepare_out_dir(out_dir: Path, arguments: dict, *, force: bool) -> None:
    """Make ``out_dir`` safe to generate into with ``arguments``; leaves a running marker.

    Same arguments give byte-identical files, so a folder made (or being made, when a run was
    interrupted) with the same arguments and generator version is simply written again. Any
    other non-empty folder is refused: writing into it would mix two benchmarks (stale files of
    another size or seed next to new ones). ``force`` empties it first.

    Raises:
        ValueError: the folder is not empty and holds something else, and ``force`` is off.
    """
    check_output_folder(out_dir, "OUT_DIR")
    expected = {"generator_version": GENERATOR_VERSION, **arguments}
    if out_dir.is_dir() and any(out_dir.iterdir()):
        recorded = _recorded_arguments(out_dir)
        if recorded != expected:
            if not force:
                if recorded is None:
                    what = f"files not written by `crossregion data synth` (no readable {SUMMARY_FILE})"
                else:
                    differing = [
                        f"{key} {recorded.get(key)!r} -> {value!r}"
                        for key, value in expected.items()
                        if recorded.get(key) != value
                    ]
                    what = f"a benchmark of other arguments ({', '.join(differing)})"
                raise ValueError(
                    f"OUT_DIR {out_dir} is not empty: it holds {what}; pass --force to empty it "
                    "first, or choose another folder"
                )
            logger.info("--force: emptying %s", out_dir)
            for entry in out_dir.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        remove_stale_temp_files(out_dir)  # left by an interrupted run of the same arguments
    write_text_atomically(out_dir / RUNNING_FILE, json.dumps(expected, sort_keys=True) + "\n")


def _recorded_arguments(out_dir: Path) -> dict | None:
    """The generator version and arguments the folder was (or is being) made with, or None."""
    for name in (RUNNING_FILE, SUMMARY_FILE):
        try:
            recorded = json.loads((out_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(recorded, dict):
            return {key: recorded.get(key) for key in ("generator_version", *ARGUMENT_KEYS)}
    return None


def generate_into(out_dir: str | Path, arguments: dict, *, force: bool) -> dict:
    """``generate_benchmark`` behind the checks of ``prepare_out_dir``; returns the summary."""
    out_dir = Path(out_dir)
    validate_arguments(arguments)
    check_resources(out_dir, arguments)
    prepare_out_dir(out_dir, arguments, force=force)
    summary = generate_benchmark(out_dir, **arguments)
    (out_dir / RUNNING_FILE).unlink()
    return summary
