"""``crossregion evaluate-predictions``: score saved prediction PNGs against a labelled split.

Predictions are single-channel PNGs at the label size, one per image, named like the official
benchmark expects: the file name starts with the image stem (``<stem>.png``,
``<stem>_labelIds.png``, ...), flat or in sub-folders (e.g. one per city). They hold train IDs
(``0..K-1``, 255 = no prediction) or Cityscapes label IDs (``0..33``, what the test server and
cityscapesScripts take). Scores follow cityscapesScripts (docs/spec.md §6.2): a void prediction on a
scored pixel is a false negative; classes with a zero denominator are left out of the mean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from crossregion.data.datasets import SegmentationDataset
from crossregion.data.labels import CITYSCAPES_LABELS, IGNORE_INDEX
from crossregion.eval.metrics import ConfusionMatrix, metrics_dict

logger = logging.getLogger(__name__)

ID_TYPES = ("auto", "train", "label")
TRAIN_IDS_SUFFIX = "_trainIds.png"
LABEL_IDS_SUFFIX = "_labelIds.png"
# What ``crossregion predict`` writes next to the ID maps; pictures, not predictions.
PICTURE_SUFFIXES = ("_color.png", "_overlay.png")
CITYSCAPES_LABEL_IDS = frozenset(label.id for label in CITYSCAPES_LABELS if label.id >= 0)
# Characters that may follow the image stem in a prediction file name.
_STEM_SEPARATORS = "_-."
_MAX_LISTED = 5


@dataclass(frozen=True)
class IdTypeDecision:
    """Which ID space the predictions are read in, and why (printed for the user)."""

    id_type: str
    reason: str


def image_stem(name: str) -> str:
    """The stem a prediction file starts with: the sample name without folders."""
    return name.rsplit("/", 1)[-1]


def match_prediction_files(predictions_dir: Path, stems: list[str], id_type: str) -> dict[str, Path]:
    """Finds the prediction file of every image stem under ``predictions_dir`` (recursively).

    A file belongs to a stem when its name is the stem followed by ``.png`` or by one of
    ``_-.`` and more text. Files named ``*_color.png``/``*_overlay.png`` are skipped. Where a stem
    has several files, ``*_trainIds.png`` is taken for ``train`` and ``auto``, ``*_labelIds.png``
    for ``label``.

    Raises:
        FileNotFoundError: the folder does not exist, or images have no prediction (listed).
        ValueError: PNG files that belong to no image (listed), or an ambiguous choice.
    """
    if not predictions_dir.is_dir():
        raise FileNotFoundError(f"predictions folder {predictions_dir} does not exist")
    known_stems = set(stems)
    candidates: dict[str, list[Path]] = {stem: [] for stem in stems}
    extra: list[Path] = []
    for path in sorted(predictions_dir.rglob("*.png")):
        if path.name.endswith(PICTURE_SUFFIXES):
            continue
        stem = _owning_stem(path.name[: -len(".png")], known_stems)
        if stem is None:
            extra.append(path)
        else:
            candidates[stem].append(path)
    missing = [stem for stem, paths in candidates.items() if not paths]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(stems)} images have no prediction under {predictions_dir}, e.g. "
            f"{_listing(missing)}; expected files named <image stem>*.png such as {missing[0]}{TRAIN_IDS_SUFFIX}"
        )
    if extra:
        raise ValueError(
            f"{len(extra)} PNG file(s) under {predictions_dir} belong to no image of the split, e.g. "
            f"{_listing([str(p) for p in extra])}; remove them or check --dataset/--split"
        )
    preferred_suffix = LABEL_IDS_SUFFIX if id_type == "label" else TRAIN_IDS_SUFFIX
    chosen = {}
    for stem, paths in candidates.items():
        if len(paths) > 1:
            paths = [p for p in paths if p.name.endswith(preferred_suffix)]
        if len(paths) != 1:
            raise ValueError(
                f"image {stem} has {len(candidates[stem])} candidate predictions "
                f"({_listing([str(p) for p in candidates[stem]])}) and not exactly one ends with {preferred_suffix}; "
                "keep one prediction per image, or pick with --id-type"
            )
        chosen[stem] = paths[0]
    return chosen


def _owning_stem(file_stem: str, known_stems: set[str]) -> str | None:
    """The longest known stem that ``file_stem`` equals or starts with before a separator."""
    if file_stem in known_stems:
        return file_stem
    for end in range(len(file_stem) - 1, 0, -1):
        if file_stem[end] in _STEM_SEPARATORS and file_stem[:end] in known_stems:
            return file_stem[:end]
    return None


def read_prediction(path: Path) -> np.ndarray:
    """A single-channel prediction PNG as an integer H×W array."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I;16", "I"):
                raise ValueError(
                    f"prediction {path} is a {image.mode} image; expected a single-channel PNG of train IDs "
                    "or label IDs (colour pictures are not predictions)"
                )
            return np.array(image).astype(np.int64)
    except OSError as error:
        raise ValueError(f"cannot read prediction {path}: {error}") from error


def decide_id_type(values_by_file: dict[Path, set[int]], num_classes: int, requested: str) -> IdTypeDecision:
    """Decides whether prediction values are train IDs or Cityscapes label IDs.

    An explicit ``requested`` type decides. Otherwise file names do: all ``*_trainIds.png``
    means train IDs, all ``*_labelIds.png`` label IDs. Without such names the values do:
    values outside ``0..K-1`` (other than 255) can only be label IDs, 255 or values above 33
    only train IDs, and values that fit both are read as train IDs. Whatever decides, every
    file's values must fit the decided type: a file that disagrees stops the run, named,
    instead of being scored in the wrong ID space.

    Raises:
        ValueError: file names mix both suffixes, or a file holds values of the other type.
    """
    allowed = {"train": set(range(num_classes)) | {IGNORE_INDEX}, "label": set(CITYSCAPES_LABEL_IDS)}
    described = {"train": f"train IDs (0..{num_classes - 1}, 255)", "label": "Cityscapes label IDs (0..33)"}
    values = set().union(*values_by_file.values())
    shown = sorted(values)
    suffixes = {"train": TRAIN_IDS_SUFFIX, "label": LABEL_IDS_SUFFIX}
    named = {path: kind for path in values_by_file for kind, suffix in suffixes.items() if path.name.endswith(suffix)}
    if requested != "auto":
        id_type, reason = requested, f"--id-type {requested}; values {shown} fit"
    elif set(named.values()) == {"train", "label"}:
        train_file = next(path for path, kind in named.items() if kind == "train")
        label_file = next(path for path, kind in named.items() if kind == "label")
        raise ValueError(
            f"prediction file names mix {TRAIN_IDS_SUFFIX} ({train_file}) and {LABEL_IDS_SUFFIX} ({label_file}); "
            "keep one kind, or pick with --id-type"
        )
    elif named:
        id_type = next(iter(named.values()))
        reason = f"file names end with {suffixes[id_type]}; values {shown} fit"
    elif values <= allowed["train"] and values <= allowed["label"]:
        id_type = "train"
        reason = f"values {shown} fit both train and label IDs; assuming train IDs (pass --id-type label if not)"
    elif values <= allowed["train"]:
        id_type, reason = "train", f"values {shown} include {sorted(values - allowed['label'])}, no label IDs"
    elif values <= allowed["label"]:
        id_type, reason = "label", f"values {shown} include {sorted(values - allowed['train'])}, no train IDs"
    else:
        path = next(path for path, file_values in values_by_file.items() if not file_values <= allowed["train"])
        raise ValueError(
            f"predictions hold values {shown}, which are neither all {described['train']} nor all "
            f"{described['label']}; e.g. prediction {path} holds {sorted(values_by_file[path] - allowed['train'])}; "
            "check --num-classes"
        )
    for path, file_values in values_by_file.items():
        outside = sorted(file_values - allowed[id_type])
        if outside:
            decided_by = "--id-type" if requested != "auto" else ("the file names" if named else "the other files")
            raise ValueError(
                f"prediction {path} holds {outside}, which are no {described[id_type]}, but {decided_by} says "
                f"{id_type} IDs; fix the file or its name, or pass the right --id-type (--num-classes {num_classes})"
            )
    return IdTypeDecision(id_type, reason)


def evaluate_predictions(
    dataset: SegmentationDataset,
    predictions_dir: str | Path,
    *,
    id_type: str = "auto",
    progress: bool = True,
) -> tuple[dict[str, Any], IdTypeDecision]:
    """Scores the prediction PNGs in ``predictions_dir`` against ``dataset``'s labels.

    All files are checked (presence, one per image, single channel, the label's size, values)
    before anything is scored, so a bad folder fails fast with every problem named.

    Args:
        dataset: a labelled dataset; its label set gives the classes and the label-ID map.
        predictions_dir: folder of prediction PNGs (see ``match_prediction_files``).
        id_type: ``auto``, ``train`` or ``label``.
        progress: show progress bars.

    Returns:
        (the ``metrics.json`` dict, the ID-type decision).
    """
    if id_type not in ID_TYPES:
        raise ValueError(f"id_type must be one of {ID_TYPES}, got {id_type!r}")
    if not dataset.labelled:
        raise ValueError(f"{type(dataset).__name__} {dataset.split!r} at {dataset.root} is unlabelled; cannot score")
    predictions_dir = Path(predictions_dir)
    stems = [image_stem(name) for name in dataset.names]
    files = match_prediction_files(predictions_dir, stems, id_type)
    ordered_files = [files[stem] for stem in stems]

    values_by_file: dict[Path, set[int]] = {}
    wrong_size = []
    for index, path in enumerate(tqdm(ordered_files, desc="check predictions", unit="file", disable=not progress)):
        prediction = read_prediction(path)
        with Image.open(dataset.label_paths[index]) as label:
            width, height = label.size
        if prediction.shape != (height, width):
            wrong_size.append(
                f"{path} is {prediction.shape[1]}x{prediction.shape[0]}, expected {width}x{height} "
                f"(the size of {dataset.label_paths[index]})"
            )
        values_by_file[path] = set(np.unique(prediction).tolist())
    if wrong_size:
        raise ValueError(
            f"{len(wrong_size)} prediction(s) differ in size from their labels (W×H): "
            + "; ".join(wrong_size[:_MAX_LISTED])
            + ("; ..." if len(wrong_size) > _MAX_LISTED else "")
        )
    decision = decide_id_type(values_by_file, dataset.num_classes, id_type)

    # label ID -> train ID; void and (for 16 classes) unscored label IDs become 255 = no class.
    to_train_ids = torch.from_numpy(dataset.label_set.lookup_table(256).astype(np.int64))
    confusion = ConfusionMatrix(dataset.num_classes)
    for index, path in enumerate(tqdm(ordered_files, desc="score predictions", unit="file", disable=not progress)):
        prediction = torch.from_numpy(read_prediction(path))
        if decision.id_type == "label":
            prediction = to_train_ids[prediction]
        confusion.update(prediction, torch.from_numpy(dataset.load_label(index).astype(np.int64)))
    settings = {
        "predictions": str(predictions_dir),
        "prediction_id_type": decision.id_type,
        "id_type_reason": decision.reason,
        "num_images": len(dataset),
    }
    return metrics_dict(confusion.compute(), dataset.class_names, settings), decision


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (", ..." if len(items) > _MAX_LISTED else "")
