"""Segmentation datasets in their official on-disk layouts.

Every dataset lists its image (and label) files once, maps on-disk label IDs to train IDs
with a lookup table built once from its ``LabelSet``, and returns samples as the contract in
``docs/architecture.md`` says: a dict with ``image`` (uint8 3xH×W before the transform),
``mask`` (int64 H×W train IDs, only when ``labelled``), ``name`` and ``index``.

Size mismatches: a few real GTA5 pairs have a label whose size differs from the image. A
sample's label is then resized to the image size with nearest-neighbour interpolation, and a
warning names the file once. ``crossregion data check`` lists every such pair.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import png
import torch
import yaml
from PIL import Image

from crossregion.data.labels import (
    IGNORE_INDEX,
    SYNTHIA_16,
    SYNTHIA_19,
    LabelSet,
    label_set_for,
)
from crossregion.registry import DATASETS

logger = logging.getLogger(__name__)


Sample = dict[str, object]
Transform = Callable[[Sample], Sample]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# A split whose decoded images and labels fit this many bytes is kept in memory after each
# sample's first read (the embedded benchmark: 1,700 images of 80x160, 87 MB): decoding a PNG and
# mapping its label cost ~3-5 ms per sample on these CPUs, up to a tenth of a training step.
# Real datasets are far larger and are read from disk every time.
DECODED_CACHE_BYTES = 512 * 2**20
# Splits of datasets that ship no official split: both mean "every file, sorted by name".
WHOLE_DATASET_SPLITS = ("all", "train")


class SegmentationDataset(torch.utils.data.Dataset):
    """Image files, optional label files, and the label set that maps their IDs to train IDs.

    Subclasses find the files of one official layout (``_find_files``) and may read labels
    their own way (``load_raw_label``). Use ``build_dataset`` to construct one by name.

    Args:
        root: dataset root in the official layout.
        split: split name, or the path of a list file of names (one per line).
        num_classes: classes of the model the samples are for (19 or 16).
        transform: called on every sample dict (see ``crossregion.data.transforms``).
        labelled: whether samples carry a ``mask``. Target-train datasets use ``False``, so
            their ground truth never reaches a training step.
        id_map: only for the ``folder`` dataset (see ``FolderDataset``).
    """

    layout: str = ""  # the expected tree, shown when the root or a folder is missing

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        num_classes: int = 19,
        transform: Transform | None = None,
        labelled: bool = True,
        id_map: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = str(split)
        self.transform = transform
        self.labelled = labelled
        if not self.root.is_dir():
            raise FileNotFoundError(self._missing_message(self.root))
        self.label_set = self._label_set(num_classes, id_map)
        self.names, self.image_paths, self.label_paths = self._find_files()
        if not self.names:
            raise FileNotFoundError(f"no images found for split {self.split!r} under {self.root}.\n{self.layout}")
        self._warned_size_mismatch: set[str] = set()
        # (known-ID mask, LUT) per table size, built once: 256 for uint8 labels, 65536 for uint16.
        self._tables_by_size: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # index -> (RGB uint8 H×W×3, train IDs or None), when the split fits DECODED_CACHE_BYTES.
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    # ----- what subclasses define -------------------------------------------------------------

    def _label_set(self, num_classes: int, id_map: str | Path | None) -> LabelSet:
        if id_map is not None:
            raise ValueError(f"id_map is only used by the 'folder' dataset, not by {type(self).__name__}")
        return label_set_for(num_classes)

    def _find_files(self) -> tuple[list[str], list[Path], list[Path] | None]:
        """Names, image paths and (when labelled) label paths of the split, sorted by name."""
        raise NotImplementedError

    # ----- public API -------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.label_set.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.label_set.class_names

    def __len__(self) -> int:
        return len(self.names)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index``; a corrupt or unreadable file raises ``ValueError``."""
        path = self.image_paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from error

    def load_raw_label(self, index: int) -> np.ndarray:
        """On-disk label IDs of sample ``index`` (H×W, uint8 or uint16)."""
        path = self._label_path(index)
        try:
            with Image.open(path) as label:
                if label.mode not in ("P", "L", "I;16", "I"):
                    raise ValueError(f"expected a single-channel label image, got mode {label.mode!r}")
                raw = np.array(label)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read label {path}: {error}") from error
        return raw if raw.dtype == np.uint8 else raw.astype(np.uint16)

    def load_label(self, index: int) -> np.ndarray:
        """Train IDs (uint8 H×W, 255 = ignore) of sample ``index``, at the label file's size.

        Raises:
            ValueError: the label holds IDs the label set does not know; they are listed.
        """
        raw = self.load_raw_label(index)
        known, lut = self.label_tables(raw.dtype)
        if not known[raw].all():
            unknown_ids = np.unique(raw[~known[raw]]).tolist()
            raise ValueError(
                f"label {self._label_path(index)} holds IDs unknown to label set "
                f"{self.label_set.name!r}: {unknown_ids}. Check --dataset/--num-classes, or run "
                f"`crossregion data check` on the dataset."
            )
        return lut[raw]

    def label_tables(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(known-ID mask, LUT) sized for ``dtype``: 256 entries for uint8, 65536 for uint16."""
        size = 256 if dtype == np.uint8 else 65536
        if size not in self._tables_by_size:
            self._tables_by_size[size] = (self.label_set.known_ids_mask(size), self.label_set.lookup_table(size))
        return self._tables_by_size[size]

    def __getitem__(self, index: int) -> Sample:
        pixels, label = self._decoded.get(index) or self._decode(index)
        sample: Sample = {
            "image": torch.from_numpy(pixels).permute(2, 0, 1).contiguous(),
            "name": self.names[index],
            "index": index,
        }
        if label is not None:
            sample["mask"] = torch.from_numpy(label.astype(np.int64))
        return self.transform(sample) if self.transform is not None else sample

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Read sample ``index`` from disk (kept in memory if the split fits the cache budget)."""
        pixels = np.array(self.load_image(index))
        label = None
        if self.labelled:
            label = self.load_label(index)
            height, width = pixels.shape[:2]
            if label.shape != (height, width):
                label = self._resize_label(index, label, height, width)
        sample_bytes = pixels.nbytes + (label.nbytes if label is not None else 0)
        if sample_bytes * len(self) <= DECODED_CACHE_BYTES:
            self._decoded[index] = (pixels, label)
        return pixels, label

    # ----- helpers ----------------------------------------------------------------------------

    def _label_path(self, index: int) -> Path:
        if self.label_paths is None:
            raise ValueError(f"{type(self).__name__} split {self.split!r} at {self.root} has no labels")
        return self.label_paths[index]

    def _resize_label(self, index: int, label: np.ndarray, height: int, width: int) -> np.ndarray:
        path = self._label_path(index)
        if str(path) not in self._warned_size_mismatch:
            self._warned_size_mismatch.add(str(path))
            logger.warning(
                "label %s is %dx%d but its image is %dx%d; resizing the label (nearest neighbour)",
                path,
                label.shape[1],
                label.shape[0],
                width,
                height,
            )
        return np.array(Image.fromarray(label).resize((width, height), Image.NEAREST))

    def _missing_message(self, path: Path) -> str:
        return f"{type(self).__name__}: {path} does not exist. Expected layout:\n{self.layout}"

    def _require_dir(self, path: Path) -> Path:
        if not path.is_dir():
            raise FileNotFoundError(self._missing_message(path))
        return path

    def _paired_files(self, image_dir: Path, label_dir: Path | None, label_suffix: str = ".png"):
        """Pairs ``image_dir/<stem>.<ext>`` with ``label_dir/<stem><label_suffix>`` for the split.

        Returns:
            (names, image paths, label paths or None), sorted by name.
        """
        images = {p.stem: p for p in self._require_dir(image_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        names = self._select_names(sorted(images))
        label_paths = None
        if label_dir is not None:
            self._require_dir(label_dir)
            label_paths = [label_dir / f"{name}{label_suffix}" for name in names]
            missing = [str(p) for p in label_paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} image(s) under {image_dir} have no label, e.g. {missing[:3]}. "
                    f"Add the labels, or pass a list file of the usable names as the split."
                )
        return names, [images[name] for name in names], label_paths

    def _select_names(self, names: list[str]) -> list[str]:
        """All names for ``all``/``train``; the names in the list file when split is a path."""
        if self.split in WHOLE_DATASET_SPLITS:
            return names
        list_file = Path(self.split)
        if not list_file.is_file():
            raise FileNotFoundError(
                f"split {self.split!r} of {type(self).__name__} is neither one of "
                f"{WHOLE_DATASET_SPLITS} nor an existing list file"
            )
        wanted = [Path(line.strip()).stem for line in list_file.read_text().splitlines() if line.strip()]
        available = set(names)
        missing = [name for name in wanted if name not in available]
        if missing:
            raise FileNotFoundError(
                f"list file {list_file} names {len(missing)} file(s) not found under {self.root}, e.g. {missing[:3]}"
            )
        return wanted


@DATASETS.register("gta5")
class GTA5Dataset(SegmentationDataset):
    """GTA5 (Richter et al. 2016): labels are palettised PNGs of Cityscapes label IDs."""

    layout = "<root>/\n  images/00001.png ...\n  labels/00001.png ...   (Cityscapes label IDs)"

    def _find_files(self):
        return self._paired_files(self.root / "images", self.root / "labels" if self.labelled else None)


@DATASETS.register("synscapes")
class SynscapesDataset(SegmentationDataset):
    """Synscapes (Wrenninge & Unger 2018): ``img/rgb`` and ``img/class`` (Cityscapes label IDs)."""

    layout = "<root>/\n  img/rgb/1.png ...\n  img/class/1.png ...   (Cityscapes label IDs)"

    def _find_files(self):
        label_dir = self.root / "img" / "class" if self.labelled else None
        return self._paired_files(self.root / "img" / "rgb", label_dir)


@DATASETS.register("synthia")
class SynthiaDataset(SegmentationDataset):
    """SYNTHIA-RAND-CITYSCAPES: 16-bit multi-channel label PNGs, the class ID in channel 0.

    16 classes map through ``SYNTHIA_16`` (FADA/CRA), 19 through ``SYNTHIA_19``. Labels are
    read with pypng, because Pillow truncates 16-bit RGB to 8 bits (and the IDs sit in the low
    byte, so they would all read as 0). pypng decodes in Python: expect ~0.1 s per full-size label.
    """

    layout = (
        "<root>/   (RAND_CITYSCAPES)\n  RGB/0000000.png ...\n"
        "  GT/LABELS/0000000.png ...   (16-bit PNG, SYNTHIA class ID in channel 0)"
    )

    def _label_set(self, num_classes: int, id_map: str | Path | None) -> LabelSet:
        if id_map is not None:
            raise ValueError("id_map is only used by the 'folder' dataset, not by SynthiaDataset")
        if num_classes not in (16, 19):
            raise ValueError(f"SYNTHIA supports 16 or 19 classes, got num_classes={num_classes}")
        return SYNTHIA_16 if num_classes == 16 else SYNTHIA_19

    def _find_files(self):
        label_dir = self.root / "GT" / "LABELS" if self.labelled else None
        return self._paired_files(self.root / "RGB", label_dir)

    def load_raw_label(self, index: int) -> np.ndarray:
        path = self._label_path(index)
        try:
            width, height, rows, info = png.Reader(filename=str(path)).asDirect()
            pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
        except (OSError, png.Error) as error:
            raise ValueError(f"cannot read label {path}: {error}") from error
        return pixels.reshape(height, width, info["planes"])[:, :, 0]


@DATASETS.register("cityscapes")
class CityscapesDataset(SegmentationDataset):
    """Cityscapes: ``leftImg8bit/<split>/<city>/`` with ``gtFine/.../*_gtFine_labelIds.png``.

    Splits ``train``, ``val`` and ``test``; test labels are withheld, so test is unlabelled.
    Names are ``<city>/<city>_<seq>_<frame>``. ``num_classes=16`` maps through ``CITYSCAPES_16``.
    """

    SPLITS = ("train", "val", "test")
    layout = (
        "<root>/\n  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        "  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"
    )

    def __init__(self, root, split="train", **kwargs) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"Cityscapes split must be one of {self.SPLITS}, got {split!r}")
        if split == "test" and kwargs.get("labelled", True):
            raise ValueError(
                f"the Cityscapes test split at {root} has no public labels, so nothing can be scored or trained on "
                "with its labels; use the val split, or write test predictions with `crossregion predict`"
            )
        super().__init__(root, split, **kwargs)

    def _find_files(self):
        image_dir = self._require_dir(self.root / "leftImg8bit" / self.split)
        label_dir = self._require_dir(self.root / "gtFine" / self.split) if self.labelled else None
        names, image_paths, label_paths = [], [], []
        for image_path in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            city = image_path.parent.name
            stem = image_path.name[: -len("_leftImg8bit.png")]
            names.append(f"{city}/{stem}")
            image_paths.append(image_path)
            if label_dir is not None:
                label_paths.append(label_dir / city / f"{stem}_gtFine_labelIds.png")
        if label_dir is not None:
            missing = [str(p) for p in label_paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{len(missing)} Cityscapes image(s) have no label, e.g. {missing[:3]}")
        return names, image_paths, (label_paths if label_dir is not None else None)


@DATASETS.register("folder")
class FolderDataset(SegmentationDataset):
    """Your own images: ``<root>/images/`` and optionally ``<root>/masks/<same stem>.png``.

    Mask IDs map to train IDs through ``id_map``, a YAML or JSON file ``{on_disk_id: train_id}``
    (use 255 for void IDs); without one, masks already hold train IDs (``0..K-1``, 255 = void).
    """

    layout = "<root>/\n  images/<name>.{png,jpg}\n  masks/<name>.png   (optional; needed when labelled)"

    def _label_set(self, num_classes: int, id_map: str | Path | None) -> LabelSet:
        target = label_set_for(num_classes)
        if id_map is None:
            mapping = {train_id: train_id for train_id in range(num_classes)}
            mapping[IGNORE_INDEX] = IGNORE_INDEX
        else:
            mapping = load_id_map(id_map, num_classes)
        return LabelSet(f"folder{num_classes}", target.class_names, target.palette, mapping)

    def _find_files(self):
        return self._paired_files(self.root / "images", self.root / "masks" if self.labelled else None)


def load_id_map(path: str | Path, num_classes: int) -> dict[int, int]:
    """Reads a YAML/JSON ``{on_disk_id: train_id}`` file and validates every entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ID map file {path} does not exist; write a YAML/JSON mapping {{on_disk_id: train_id}}"
        )
    with path.open() as f:
        content = yaml.safe_load(f)  # YAML is a superset of JSON
    if not isinstance(content, dict) or not content:
        raise ValueError(f"ID map {path} must be a non-empty mapping {{on_disk_id: train_id}}")
    mapping = {}
    for on_disk_id, train_id in content.items():
        try:
            on_disk_id, train_id = int(on_disk_id), int(train_id)
        except (TypeError, ValueError):
            raise ValueError(f"ID map {path}: entry {on_disk_id!r}: {train_id!r} is not an integer pair") from None
        if not 0 <= on_disk_id < 65536:
            raise ValueError(f"ID map {path}: on-disk ID {on_disk_id} is outside 0..65535")
        if not (0 <= train_id < num_classes or train_id == IGNORE_INDEX):
            raise ValueError(
                f"ID map {path}: ID {on_disk_id} maps to {train_id}; train IDs are 0..{num_classes - 1} "
                f"or {IGNORE_INDEX} (void)"
            )
        mapping[on_disk_id] = train_id
    return mapping


def build_dataset(name: str, root: str | Path, split: str = "train", **options: Any) -> SegmentationDataset:
    """Builds a registered dataset (``gta5``, ``synthia``, ``synscapes``, ``cityscapes``, ``folder``).

    ``root``, ``split`` and the keyword ``options`` (``num_classes``, ``transform``,
    ``labelled``, ``id_map``) are ``SegmentationDataset``'s arguments, with its defaults.
    """
    return DATASETS.get(name)(root, split, **options)
