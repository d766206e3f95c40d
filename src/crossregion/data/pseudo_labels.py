"""The pseudo-label store: per target image the pseudo label and its normalised entropy.

The official code keeps the entropy as a float32 ``.npy`` (8,388,736 bytes per 1024×2048
image, 25 GB for Cityscapes train). CRA only ever compares the entropy with thresholds
λ / r (λ around 0.01, rare-class factor r = 0.5), so the store keeps a 10-bit code that is
coarse below ``FINE_START`` and fine (log-spaced) from there up to 1/K, where thresholds live.
The high 8 bits are a grayscale PNG (smooth, so it compresses well); the low 2 bits exist only
for fine-range pixels and ride in a private chunk of the same PNG. Measured on realistic maps this
is ~25× smaller than the ``.npy`` with ≥ 99.9% mask agreement for λ in [0.005, 0.05] (``bench/pseudo_label_store.py``).

Layout of a store folder::

    manifest.json            settings and the image names of the split (written first)
    labels/<name>.png        pseudo label, palettised PNG, value = train ID
    entropy/<name>.png       entropy code: high plane + refinement chunk (see EntropyCodec)
    image_stats/<name>.json  per-image counts and the SHA-256 of its two PNGs; written last, so
                             it marks the image complete
    stats.json               totals, rare classes, trusted fractions, entropy histogram
    entropy_histogram.png    the histogram as a plot

Every file is written to a temporary name and renamed, so an interrupted run leaves only
complete images behind and resumes with the images that have no ``image_stats`` file or whose
files do not decode or match their checksums (redone, not kept). Training checks every image
the same way before its first iteration (``PseudoLabelStore.check_compatible``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, PngImagePlugin

from crossregion.files import remove_stale_temp_files, write_bytes_atomically
from crossregion.trust import rare_class_factors, trusted_at, validate_threshold

logger = logging.getLogger(__name__)

STORE_FORMAT = "crossregion-pseudo-labels"
ENCODING_VERSION = 1

# Entropy code layout (ENCODING_VERSION 1). Thresholds of interest are λ in [0.005, 0.05] and
# λ / 0.5 for rare classes, i.e. entropies from 0.005 up to 1/K; the fine range starts a little
# below. Below it a few coarse log bins keep the histogram informative at ~no storage cost.
CODE_BITS = 10
REFINEMENT_BITS = 2
FINE_START = 0.004
COARSE_FLOOR = 1e-3
COARSE_BINS = 4  # log bins in [COARSE_FLOOR, FINE_START); code 0 is [0, COARSE_FLOOR)

# Entropy histogram of stats.json: [0, 1e-6), then log bins up to 1/K.
HISTOGRAM_FLOOR = 1e-6
HISTOGRAM_BINS = 60

MANIFEST_FILE = "manifest.json"
STATS_FILE = "stats.json"
HISTOGRAM_PLOT_FILE = "entropy_histogram.png"


class EntropyCodec:
    """Quantises normalised entropy e ∈ [0, 1/K] to a 10-bit code and back.

    Codes of the coarse range are multiples of 4 (no refinement bits); the
    ``1024 - 4 * (COARSE_BINS + 1)`` fine codes split [FINE_START, 1/K] into log-spaced bins
    (relative width 0.26% for K=19). A code is kept as its high 8 bits (an H×W plane that
    compresses well as PNG) plus, for fine pixels only, its low 2 bits packed in raster order
    (incompressible, so they cost exactly 2 bits per fine pixel). Decoding returns each bin's
    geometric centre, so a mask ``e <= t`` can differ from the float32 one only for pixels in
    the bin that contains t.

    Args:
        num_classes: K; the entropy's upper bound is 1/K.
    """

    def __init__(self, num_classes: int) -> None:
        max_entropy = 1.0 / num_classes
        if max_entropy <= FINE_START:
            raise ValueError(
                f"the entropy encoding supports at most {math.ceil(1 / FINE_START) - 1} classes, got {num_classes}"
            )
        num_codes = 1 << CODE_BITS
        step = 1 << REFINEMENT_BITS
        self.first_fine_high = COARSE_BINS + 1
        first_fine_code = step * self.first_fine_high
        coarse_edges = np.geomspace(COARSE_FLOOR, FINE_START, COARSE_BINS + 1)[:-1]
        fine_edges = np.geomspace(FINE_START, max_entropy, num_codes - first_fine_code + 1)
        # Bins in code order: [0, floor), the coarse bins, then the fine bins.
        lower_edges = np.concatenate([[0.0], coarse_edges, fine_edges[:-1]])
        upper_edges = np.concatenate([coarse_edges, [FINE_START], fine_edges[1:]])
        self._lower_edges = lower_edges
        self._bin_codes = np.concatenate(
            [step * np.arange(COARSE_BINS + 1), np.arange(first_fine_code, num_codes)]
        ).astype(np.uint16)
        bin_centres = np.where(lower_edges > 0, np.sqrt(lower_edges * upper_edges), upper_edges / 2)
        self._centres = np.zeros(num_codes, dtype=np.float32)
        self._centres[self._bin_codes] = bin_centres

    def encode(self, entropy: np.ndarray) -> tuple[np.ndarray, bytes]:
        """Entropy map -> (high 8 bits of the code, packed low bits of the fine pixels).

        Shape:
            - entropy: (H, W) float
            - output: (H, W) uint8 and bytes
        """
        if entropy.ndim != 2:
            raise ValueError(f"entropy map must be H×W, got shape {entropy.shape}")
        bins = np.searchsorted(self._lower_edges, entropy, side="right") - 1
        codes = self._bin_codes[np.clip(bins, 0, len(self._bin_codes) - 1)]
        high = (codes >> REFINEMENT_BITS).astype(np.uint8)
        low = (codes[high >= self.first_fine_high] & ((1 << REFINEMENT_BITS) - 1)).astype(np.uint8)
        low_bits = np.unpackbits(low[:, None], axis=1)[:, 8 - REFINEMENT_BITS :]
        return high, np.packbits(low_bits.ravel()).tobytes()

    def decode(self, high: np.ndarray, refinement: bytes) -> np.ndarray:
        """(high plane, packed low bits) -> float32 entropy (bin centres).

        Shape:
            - high: (H, W) uint8
            - output: (H, W) float32
        """
        codes = high.astype(np.uint16) << REFINEMENT_BITS
        fine = high >= self.first_fine_high
        num_fine = int(fine.sum())
        bits = np.unpackbits(np.frombuffer(refinement, dtype=np.uint8))
        if bits.size < num_fine * REFINEMENT_BITS:
            raise ValueError(f"entropy refinement holds {bits.size} bits, {num_fine * REFINEMENT_BITS} needed")
        low_bits = bits[: num_fine * REFINEMENT_BITS].reshape(num_fine, REFINEMENT_BITS)
        weights = (1 << np.arange(REFINEMENT_BITS - 1, -1, -1)).astype(np.uint16)
        codes[fine] |= low_bits.astype(np.uint16) @ weights
        return self._centres[codes]


# Private ancillary PNG chunk holding the refinement bits: lower-case first letter = ancillary,
# second = private, so every PNG viewer shows the high plane and ignores the chunk.
REFINEMENT_CHUNK = b"crFn"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_entropy_png(codec: EntropyCodec, entropy: np.ndarray) -> bytes:
    """The entropy file: a grayscale PNG of the high plane with the refinement bits in a chunk."""
    high, refinement = codec.encode(entropy)
    chunks = PngImagePlugin.PngInfo()
    chunks.add(REFINEMENT_CHUNK, zlib.compress(refinement, 6))
    buffer = io.BytesIO()
    Image.fromarray(high).save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()


def decode_entropy_png(codec: EntropyCodec, data: bytes, source: str) -> np.ndarray:
    """Inverse of ``encode_entropy_png``; ``source`` names the file in errors."""
    with Image.open(io.BytesIO(data)) as image:
        high = np.asarray(image, dtype=np.uint8)
    return codec.decode(high, zlib.decompress(_read_png_chunk(data, REFINEMENT_CHUNK, source)))


def _read_png_chunk(data: bytes, chunk_type: bytes, source: str) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"{source} is not a PNG file")
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == chunk_type:
            return data[offset + 8 : offset + 8 + length]
        offset += 12 + length  # length, type, data, CRC
    raise ValueError(f"{source} has no {chunk_type.decode()} chunk: not an entropy file of this store")


def histogram_edges(num_classes: int) -> np.ndarray:
    """Bin edges of the stats.json entropy histogram: 0, then log-spaced from 1e-6 to 1/K."""
    return np.concatenate([[0.0], np.geomspace(HISTOGRAM_FLOOR, 1.0 / num_classes, HISTOGRAM_BINS)])


def _read_json(path: Path, what: str):
    """A JSON file of the store; a damaged one is an error that names it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{what} {path} cannot be read ({error}); the store is damaged: "
            "rerun `crossregion pseudo-label` into a new --output"
        ) from error


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_problem(store_path: Path, name: str, codec: EntropyCodec) -> str | None:
    """Why image ``name`` of a store is not usable (missing, damaged, changed file), or None.

    Its ``image_stats`` record is written last and holds the SHA-256 of its label and entropy
    PNGs, so a truncated, replaced or undecodable file is caught here, not mid-training.
    """
    record_path = store_path / "image_stats" / f"{name}.json"
    if not record_path.exists():
        return f"{record_path} is missing"
    try:
        checksums = json.loads(record_path.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{record_path} cannot be read or has no checksums ({error})"
    for relative in (f"labels/{name}.png", f"entropy/{name}.png"):
        path = store_path / relative
        if not path.exists():
            return f"{path} is missing"
        data = path.read_bytes()
        if _sha256(data) != checksums.get(relative):
            return f"{path} does not match its checksum in {record_path} (truncated or changed)"
    try:
        _decode_label_png((store_path / "labels" / f"{name}.png").read_bytes())
        decode_entropy_png(codec, (store_path / "entropy" / f"{name}.png").read_bytes(), f"entropy/{name}.png")
    except (OSError, ValueError, zlib.error) as error:
        return f"{store_path} image {name} cannot be decoded ({error})"
    return None


def _decode_label_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image, dtype=np.uint8)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_name(name: str) -> None:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"image name {name!r} cannot be a path inside the store (empty, absolute or with '..')")


class PseudoLabelWriter:
    """Writes a store, resuming an interrupted one made with the same settings.

    Args:
        path: the store folder (created if missing).
        manifest: the settings: ``num_classes``, ``class_names``, ``palette``, ``dataset``,
            ``split``, ``root``, ``names`` (every image of the split), ``checkpoint``
            (path and sha256), ``input_size``, ``flip``, ``threshold``, ``rare_share``,
            ``rare_factor``. Format and encoding version are added here.

    Raises:
        ValueError: the folder holds a store made with other settings.
    """

    REQUIRED_KEYS = (
        "num_classes",
        "class_names",
        "palette",
        "dataset",
        "split",
        "root",
        "names",
        "checkpoint",
        "input_size",
        "flip",
        "threshold",
        "rare_share",
        "rare_factor",
    )

    def __init__(self, path: str | Path, manifest: dict) -> None:
        missing = [key for key in self.REQUIRED_KEYS if key not in manifest]
        if missing:
            raise KeyError(f"pseudo-label manifest lacks {missing}")
        num_classes = manifest["num_classes"]
        if len(manifest["class_names"]) != num_classes:
            raise ValueError(f"{len(manifest['class_names'])} class names for {num_classes} classes")
        validate_threshold(manifest["threshold"], num_classes)
        for name in manifest["names"]:
            _check_name(name)
        self.path = Path(path)
        self.manifest = {"format": STORE_FORMAT, "encoding_version": ENCODING_VERSION, **manifest}
        # JSON round trip, so a tuple in the settings compares equal to the stored list.
        self.manifest = json.loads(json.dumps(self.manifest))
        manifest_path = self.path / MANIFEST_FILE
        if manifest_path.exists():
            existing = _read_json(manifest_path, "pseudo-label manifest")
            differing = sorted(
                key for key in set(existing) | set(self.manifest) if existing.get(key) != self.manifest.get(key)
            )
            if differing:
                raise ValueError(
                    f"{self.path} holds a pseudo-label store made with other settings (differing: "
                    f"{', '.join(differing)}); choose another --output or delete that folder"
                )
        else:
            write_bytes_atomically(manifest_path, json.dumps(self.manifest, indent=1).encode())
        remove_stale_temp_files(self.path)  # left by a run killed mid-write
        self.codec = EntropyCodec(num_classes)
        self._name_set = set(self.manifest["names"])
        self._palette = [channel for colour in manifest["palette"] for channel in colour]

    def is_complete(self, name: str) -> bool:
        return (self.path / "image_stats" / f"{name}.json").exists()

    def pending_names(self) -> list[str]:
        """The images of the split not stored yet or stored damaged (redone), in manifest order."""
        pending = []
        for name in self.manifest["names"]:
            problem = image_problem(self.path, name, self.codec)
            if problem is not None:
                if self.is_complete(name):
                    logger.warning("redoing %s: %s", name, problem)
                pending.append(name)
        return pending

    def write(self, name: str, pseudo_label: np.ndarray, entropy: np.ndarray) -> None:
        """Store one image; its stats file goes last and marks it complete.

        Args:
            name: the image name (may contain ``/``).
            pseudo_label: train IDs ``0..K-1``.
            entropy: normalised entropy in [0, 1/K], float32 (statistics use these exact values).

        Shape:
            - pseudo_label: (H, W) uint8
            - entropy: (H, W) float32
        """
        if name not in self._name_set:
            raise KeyError(f"image {name!r} is not in the manifest of {self.path}")
        if pseudo_label.shape != entropy.shape:
            raise ValueError(f"{name}: pseudo label {pseudo_label.shape} and entropy {entropy.shape} differ in shape")
        num_classes = self.manifest["num_classes"]
        if pseudo_label.dtype != np.uint8 or int(pseudo_label.max()) >= num_classes:
            raise ValueError(f"{name}: pseudo label must be uint8 train IDs below {num_classes}")
        label_image = Image.fromarray(pseudo_label)
        label_image.putpalette(self._palette)  # makes it a palettised ('P') PNG, as the official one
        label_png, entropy_png = _png_bytes(label_image), encode_entropy_png(self.codec, entropy)
        write_bytes_atomically(self.path / "labels" / f"{name}.png", label_png)
        write_bytes_atomically(self.path / "entropy" / f"{name}.png", entropy_png)
        stats = self._image_stats(pseudo_label, entropy)
        stats["sha256"] = {f"labels/{name}.png": _sha256(label_png), f"entropy/{name}.png": _sha256(entropy_png)}
        write_bytes_atomically(self.path / "image_stats" / f"{name}.json", json.dumps(stats).encode())

    def _image_stats(self, pseudo_label: np.ndarray, entropy: np.ndarray) -> dict:
        # Trusted counts at λ and at λ / factor: which classes are rare is known only once every
        # image is done, and these two thresholds are all the final statistics need.
        num_classes = self.manifest["num_classes"]
        threshold = self.manifest["threshold"]
        labels = pseudo_label.ravel()
        values = entropy.ravel()
        entropy_tensor = torch.from_numpy(values)
        trusted_common = labels[trusted_at(entropy_tensor, 1.0, threshold).numpy()]
        trusted_rare = labels[trusted_at(entropy_tensor, self.manifest["rare_factor"], threshold).numpy()]
        histogram, _ = np.histogram(values, bins=histogram_edges(num_classes))
        # np.histogram drops values above the last edge (float round-off at 1/K): count them last.
        histogram[-1] += int((values > 1.0 / num_classes).sum())
        return {
            "class_pixel_counts": np.bincount(labels, minlength=num_classes).tolist(),
            "trusted_counts": np.bincount(trusted_common, minlength=num_classes).tolist(),
            "trusted_counts_if_rare": np.bincount(trusted_rare, minlength=num_classes).tolist(),
            "entropy_histogram": histogram.tolist(),
        }

    def finish(self) -> dict:
        """Aggregate the per-image counts into stats.json and draw the histogram plot.

        Raises:
            ValueError: some images are not stored yet.
        """
        pending = [name for name in self.manifest["names"] if not self.is_complete(name)]
        if pending:
            raise ValueError(f"{len(pending)} images of {self.path} are not stored yet, e.g. {pending[0]!r}")
        manifest = self.manifest
        num_classes = manifest["num_classes"]
        totals = {
            key: np.zeros(num_classes, dtype=np.int64)
            for key in ("class_pixel_counts", "trusted_counts", "trusted_counts_if_rare")
        }
        histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
        for name in manifest["names"]:
            image_stats = _read_json(self.path / "image_stats" / f"{name}.json", "image record")
            for key, total in totals.items():
                total += np.asarray(image_stats[key], dtype=np.int64)
            histogram += np.asarray(image_stats["entropy_histogram"], dtype=np.int64)
        counts = totals["class_pixel_counts"]
        factors = rare_class_factors(counts.tolist(), share=manifest["rare_share"], factor=manifest["rare_factor"])
        is_rare = (factors < 1.0).numpy()
        trusted = np.where(is_rare, totals["trusted_counts_if_rare"], totals["trusted_counts"])
        class_names = manifest["class_names"]
        stats = {
            "num_images": len(manifest["names"]),
            "num_pixels": int(counts.sum()),
            "class_names": class_names,
            "class_pixel_counts": counts.tolist(),
            "rare_share": manifest["rare_share"],
            "rare_factor": manifest["rare_factor"],
            "rare_class_ids": np.flatnonzero(is_rare).tolist(),
            "rare_class_names": [class_names[i] for i in np.flatnonzero(is_rare)],
            "threshold": manifest["threshold"],
            "trusted_fraction": float(trusted.sum() / counts.sum()),
            "trusted_fraction_per_class": {
                class_names[i]: (float(trusted[i] / counts[i]) if counts[i] else None) for i in range(num_classes)
            },
            "entropy_histogram": {"edges": histogram_edges(num_classes).tolist(), "counts": histogram.tolist()},
        }
        write_bytes_atomically(self.path / STATS_FILE, json.dumps(stats, indent=1).encode())
        plot = draw_entropy_histogram(stats)
        write_bytes_atomically(self.path / HISTOGRAM_PLOT_FILE, _png_bytes(plot))
        return stats


def draw_entropy_histogram(stats: dict, width: int = 640, height: int = 360) -> Image.Image:
    """Bar plot of the stats.json entropy histogram (share of pixels per log bin), with λ and λ/r marked."""
    edges = np.asarray(stats["entropy_histogram"]["edges"])
    counts = np.asarray(stats["entropy_histogram"]["counts"], dtype=np.float64)
    shares = counts / max(counts.sum(), 1.0)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 50, width - 10, 30, height - 40
    log_low, log_high = math.log10(edges[1]), math.log10(edges[-1])

    def x_of(entropy: float) -> float:
        return left + (math.log10(entropy) - log_low) / (log_high - log_low) * (right - left)

    # The first bin [0, 1e-6) is drawn as a bar left of the axis start.
    bar_edges = [(left - 20, left - 4)] + [(x_of(edges[i]), x_of(edges[i + 1])) for i in range(1, len(edges) - 1)]
    peak = max(shares.max(), 1e-12)
    for (x0, x1), share in zip(bar_edges, shares):
        draw.rectangle([x0, bottom - share / peak * (bottom - top), max(x1 - 1, x0), bottom], fill=(70, 110, 180))
    draw.line([left, bottom, right, bottom], fill="black")
    for exponent in range(math.ceil(log_low), math.floor(log_high) + 1):
        x = x_of(10.0**exponent)
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 12, bottom + 6), f"1e{exponent}", fill="black")
    for value, colour, label in (
        (stats["threshold"], (200, 30, 30), "λ"),
        (stats["threshold"] / stats["rare_factor"], (230, 140, 0), "λ/r"),
    ):
        if edges[1] < value < edges[-1]:
            draw.line([x_of(value), top, x_of(value), bottom], fill=colour, width=2)
            draw.text((x_of(value) + 3, top), label, fill=colour)
    draw.text(
        (left, 8),
        f"normalised entropy (log scale), peak bar = {peak:.1%} of pixels; trusted {stats['trusted_fraction']:.1%}",
        fill="black",
    )
    draw.text((left - 28, bottom + 20), "0", fill="black")
    return image


class PseudoLabelStore:
    """Reads a finished store.

    Args:
        path: the store folder written by ``crossregion pseudo-label``.

    Raises:
        FileNotFoundError: no manifest in ``path``.
        ValueError: the folder is not a store of this encoding version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.exists():
            raise FileNotFoundError(
                f"no pseudo-label store at {self.path} ({manifest_path} missing); "
                f"create one with `crossregion pseudo-label --output {self.path} ...`"
            )
        self.manifest = _read_json(manifest_path, "pseudo-label manifest")
        if not isinstance(self.manifest, dict) or not isinstance(self.manifest.get("names"), list):
            raise ValueError(
                f"pseudo-label manifest {manifest_path} is not a store manifest (no list of names); "
                "recreate the store with `crossregion pseudo-label`"
            )
        if self.manifest.get("format") != STORE_FORMAT or self.manifest.get("encoding_version") != ENCODING_VERSION:
            raise ValueError(
                f"{manifest_path} is not a {STORE_FORMAT} store of encoding version {ENCODING_VERSION} "
                f"(format {self.manifest.get('format')!r}, version {self.manifest.get('encoding_version')!r}); "
                "recreate it with `crossregion pseudo-label`"
            )
        self.codec = EntropyCodec(self.num_classes)
        self._stats: dict | None = None
        self._files_checked = False  # validate_files decodes every image: once per store object

    @property
    def names(self) -> list[str]:
        return list(self.manifest["names"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def stats(self) -> dict:
        """stats.json; its absence means the run that writes the store did not finish."""
        if self._stats is None:
            stats_path = self.path / STATS_FILE
            if not stats_path.exists():
                done = sum((self.path / "image_stats" / f"{name}.json").exists() for name in self.names)
                raise ValueError(
                    f"pseudo-label store {self.path} is incomplete ({done} of {len(self.names)} images, "
                    f"no {stats_path}); rerun the same `crossregion pseudo-label` command to finish it"
                )
            self._stats = _read_json(stats_path, "pseudo-label statistics")
        return self._stats

    @property
    def class_pixel_counts(self) -> list[int]:
        """Pixels per pseudo-label class over the split, indexed by train ID (for rare classes)."""
        return list(self.stats["class_pixel_counts"])

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The pseudo label (uint8 H×W train IDs) and normalised entropy (float32 H×W) of one image."""
        label_path = self.path / "labels" / f"{name}.png"
        entropy_path = self.path / "entropy" / f"{name}.png"
        for path in (label_path, entropy_path):
            if not path.exists():
                raise FileNotFoundError(f"pseudo-label store {self.path} has no {path.relative_to(self.path)}")
        try:
            pseudo_label = _decode_label_png(label_path.read_bytes())
            entropy = decode_entropy_png(self.codec, entropy_path.read_bytes(), str(entropy_path))
        except (OSError, ValueError, zlib.error) as error:
            raise ValueError(
                f"pseudo-label store {self.path}: the files of image {name!r} ({label_path}, "
                f"{entropy_path}) cannot be decoded ({error}); rerun `crossregion pseudo-label` "
                "with the same arguments to redo them"
            ) from error
        if pseudo_label.shape != entropy.shape:
            raise ValueError(
                f"{name}: pseudo label {pseudo_label.shape} and entropy {entropy.shape} differ in {self.path}"
            )
        return pseudo_label, entropy

    def check_compatible(
        self,
        *,
        num_classes: int | None = None,
        dataset: str | None = None,
        split: str | None = None,
        names: Sequence[str] | None = None,
        threshold: float | None = None,
    ) -> None:
        """Raise ``ValueError`` before training if this store cannot serve the given run.

        Args:
            num_classes: the model's class count.
            dataset: the target dataset name.
            split: the target split.
            names: image names of the target split; each must be in the store.
            threshold: λ, which must lie in (0, 1/K].
        """
        hint = "; make a matching store with `crossregion pseudo-label`"
        if num_classes is not None and num_classes != self.num_classes:
            raise ValueError(
                f"pseudo-label store {self.path} was made by a {self.num_classes}-class model, "
                f"but the model has {num_classes} classes{hint}"
            )
        if dataset is not None and dataset != self.manifest["dataset"]:
            raise ValueError(
                f"pseudo-label store {self.path} is of dataset {self.manifest['dataset']!r}, not {dataset!r}{hint}"
            )
        if split is not None and split != self.manifest["split"]:
            raise ValueError(
                f"pseudo-label store {self.path} is of split {self.manifest['split']!r}, not {split!r}{hint}"
            )
        if names is not None:
            stored = set(self.manifest["names"])
            missing = [name for name in names if name not in stored]
            if missing:
                raise ValueError(
                    f"pseudo-label store {self.path} lacks {len(missing)} of {len(names)} images of the "
                    f"target split, e.g. {missing[:3]}{hint}"
                )
        if threshold is not None:
            validate_threshold(threshold, self.num_classes)
        _ = self.stats  # an unfinished store fails here, before training starts
        self.validate_files()

    def validate_files(self) -> None:
        """Raise ``ValueError`` naming the images whose files are missing, damaged or changed."""
        if self._files_checked:
            return
        problems = [problem for name in self.names if (problem := image_problem(self.path, name, self.codec))]
        if problems:
            raise ValueError(
                f"pseudo-label store {self.path} has {len(problems)} damaged image(s): {'; '.join(problems[:3])}"
                f"{'; ...' if len(problems) > 3 else ''}; rerun the same `crossregion pseudo-label` command "
                "to redo them"
            )
        self._files_checked = True
