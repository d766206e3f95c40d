"""``crossregion data check``: is a dataset folder usable, and what is in it?

Validates the layout, reads every image and label once, and reports unreadable files,
image/label size mismatches, unknown label IDs (with pixel counts) and the per-class pixel
histogram. ``check_dataset`` is the same check as a function, for code that wants to validate
a dataset before a long run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from crossregion.data.datasets import build_dataset
from crossregion.data.labels import IGNORE_INDEX

PROGRESS_MIN_IMAGES = 100  # smaller datasets finish too fast for a progress bar to help
LISTED_PER_PROBLEM = 10  # the report names this many files per problem, then counts the rest


@dataclass
class DatasetReport:
    """What ``check_dataset`` found. ``usable`` is the verdict."""

    dataset: str
    root: str
    split: str
    labelled: bool
    label_set: str = ""
    class_names: tuple[str, ...] = ()
    num_images: int = 0
    num_labels: int = 0
    layout_errors: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    files_with_unknown_ids: list[str] = field(default_factory=list)
    unknown_id_pixels: dict[int, int] = field(default_factory=dict)
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ignore_pixels: int = 0

    @property
    def usable(self) -> bool:
        """No layout error, no unreadable file, no unknown ID, at least one image.

        Size mismatches do not make a dataset unusable: samples resize such labels (nearest).
        """
        return not self.layout_errors and not self.unreadable and not self.unknown_id_pixels and self.num_images > 0

    def format(self) -> str:
        """The human-readable report ``crossregion data check`` prints."""
        lines = [f"dataset {self.dataset} at {self.root} (split {self.split})"]
        if self.layout_errors:
            lines += ["layout: FAILED", *[f"  {error}" for error in self.layout_errors]]
            return "\n".join([*lines, "summary: NOT usable (fix the layout first)"])
        lines.append(f"label set {self.label_set}, {len(self.class_names)} classes")
        labels = f", labels: {self.num_labels}" if self.labelled else " (unlabelled split)"
        lines.append(f"images: {self.num_images}{labels}")
        if self.labelled:
            total = int(self.pixel_counts.sum()) + self.ignore_pixels
            lines.append("class pixel histogram (train IDs, % of all label pixels):")
            for train_id, (name, count) in enumerate(zip(self.class_names, self.pixel_counts.tolist())):
                lines.append(f"  {train_id:>3} {name:<15} {count:>14,} {100 * count / max(total, 1):7.2f}%")
            lines.append(
                f"  {IGNORE_INDEX:>3} {'ignore':<15} {self.ignore_pixels:>14,} "
                f"{100 * self.ignore_pixels / max(total, 1):7.2f}%"
            )
            missing = [name for name, count in zip(self.class_names, self.pixel_counts.tolist()) if count == 0]
            if missing:
                lines.append(f"classes without pixels: {', '.join(missing)}")
        lines += _listed("unreadable files", self.unreadable)
        lines += _listed("image/label size mismatches (labels get resized, nearest)", self.size_mismatches)
        if self.unknown_id_pixels:
            ids = ", ".join(f"{label_id} ({count:,} px)" for label_id, count in sorted(self.unknown_id_pixels.items()))
            lines.append(f"unknown label IDs (not in label set {self.label_set}): {ids}")
            lines += _listed("files with unknown IDs", self.files_with_unknown_ids)
        lines.append("summary: " + ("usable" if self.usable else "NOT usable: " + "; ".join(self._reasons())))
        return "\n".join(lines)

    def _reasons(self) -> list[str]:
        reasons = []
        if self.num_images == 0:
            reasons.append("no images")
        if self.unreadable:
            reasons.append(f"{len(self.unreadable)} unreadable file(s)")
        if self.unknown_id_pixels:
            reasons.append(f"{len(self.files_with_unknown_ids)} label(s) with unknown IDs")
        return reasons


def _listed(title: str, entries: list[str]) -> list[str]:
    if not entries:
        return []
    lines = [f"{title}: {len(entries)}", *[f"  {entry}" for entry in entries[:LISTED_PER_PROBLEM]]]
    if len(entries) > LISTED_PER_PROBLEM:
        lines.append(f"  ... and {len(entries) - LISTED_PER_PROBLEM} more")
    return lines


def _split_has_labels(name: str, root: Path, split: str) -> bool:
    """Cityscapes test withholds labels; a folder dataset has them only with a ``masks/`` folder."""
    if name == "cityscapes":
        return split != "test"
    if name == "folder":
        return (root / "masks").is_dir()
    return True


def check_dataset(
    name: str,
    root: str | Path,
    split: str = "train",
    *,
    num_classes: int = 19,
    id_map: str | Path | None = None,
    labelled: bool | None = None,
    progress: bool = True,
) -> DatasetReport:
    """Reads every file of a dataset split once and reports what is wrong with it.

    Args:
        name: registered dataset name (``gta5``, ``synthia``, ``synscapes``, ``cityscapes``, ``folder``).
        root, split, num_classes, id_map: as for ``build_dataset``.
        labelled: check labels too; None checks them where the split has them.
        progress: show a progress bar (for datasets of at least ``PROGRESS_MIN_IMAGES`` images).

    Returns:
        The report; ``report.usable`` says whether training can use the dataset.
    """
    root = Path(root)
    if labelled is None:
        labelled = _split_has_labels(name, root, split)
    report = DatasetReport(dataset=name, root=str(root), split=str(split), labelled=labelled)
    try:
        dataset = build_dataset(name, root, split, num_classes=num_classes, labelled=labelled, id_map=id_map)
    except (FileNotFoundError, ValueError, KeyError) as error:
        report.layout_errors.append(error.args[0] if isinstance(error, KeyError) else str(error))
        return report
    report.label_set = dataset.label_set.name
    report.class_names = dataset.class_names
    report.num_images = len(dataset)
    class_and_ignore_counts = np.zeros(256, dtype=np.int64)
    show_bar = progress and len(dataset) >= PROGRESS_MIN_IMAGES
    for index in tqdm(range(len(dataset)), desc=f"checking {name}", disable=not show_bar):
        try:
            width, height = dataset.load_image(index).size
            image_size: tuple[int, int] | None = (height, width)
        except ValueError as error:
            report.unreadable.append(str(error))
            image_size = None
        if not labelled:
            continue
        try:
            raw = dataset.load_raw_label(index)
        except ValueError as error:
            report.unreadable.append(str(error))
            continue
        report.num_labels += 1
        if image_size is not None and raw.shape != image_size:
            report.size_mismatches.append(
                f"{dataset.names[index]}: image {image_size[1]}x{image_size[0]}, label {raw.shape[1]}x{raw.shape[0]}"
            )
        known, lut = dataset.label_tables(raw.dtype)
        known_pixels = known[raw]
        if not known_pixels.all():
            unknown_ids, counts = np.unique(raw[~known_pixels], return_counts=True)
            for label_id, count in zip(unknown_ids.tolist(), counts.tolist()):
                report.unknown_id_pixels[label_id] = report.unknown_id_pixels.get(label_id, 0) + count
            report.files_with_unknown_ids.append(str(dataset.label_paths[index]))
        # Unknown IDs map to ignore here, so the histogram still covers the readable pixels.
        class_and_ignore_counts += np.bincount(lut[raw].ravel(), minlength=256)
    report.pixel_counts = class_and_ignore_counts[: dataset.num_classes]
    report.ignore_pixels = int(class_and_ignore_counts[IGNORE_INDEX])
    return report
