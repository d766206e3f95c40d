"""Confusion-matrix metrics: per-class IoU, mIoU, pixel and mean accuracy; ``metrics.json``/``.md``.

Conventions (docs/spec.md §6):
- Scored at label resolution; ground-truth pixels equal to ``IGNORE_INDEX`` never count.
- A prediction outside ``0..K-1`` (a void label ID, or 255 in a saved prediction) on a scored
  pixel is a false negative of the ground-truth class and a false positive of nothing, as in
  cityscapesScripts. The matrix keeps one extra column, "no class", for these pixels.
- A class with a zero denominator (absent from both the ground truth and the prediction) has
  IoU NaN (``null`` in JSON) and is left out of the mean: the mean is over the classes that can
  be scored, as cityscapesScripts computes it. FADA/CRA's ``test.py`` divides by K instead
  (an absent class counts as 0); on the full Cityscapes val set every class occurs, so both give
  the same number, while on small or synthetic splits NaN-skipping does not punish a model for
  classes the split does not contain.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from crossregion.data.labels import IGNORE_INDEX, SYNTHIA_13_CLASS_NAMES
from crossregion.files import write_text_atomically


class ConfusionMatrix:
    """A K×(K+1) pixel confusion matrix accumulated on the model's device.

    ``matrix[g, p]`` counts scored pixels of ground-truth class ``g`` predicted as ``p``; column
    ``K`` counts scored pixels whose prediction is no class at all.

    Args:
        num_classes: K, the number of scored classes (train IDs ``0..K-1``).
        device: where the matrix lives; use the device the predictions are on.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds one batch of predictions.

        Args:
            predictions: predicted train IDs; values outside ``0..K-1`` mean "no class".
            labels: ground-truth train IDs ``0..K-1`` or ``IGNORE_INDEX``.

        Raises:
            ValueError: shapes differ, or a label is neither a class nor ``IGNORE_INDEX``.

        Shape:
            predictions, labels: any shape, the same for both (e.g. N×H×W at label resolution).
        """
        if predictions.shape != labels.shape:
            raise ValueError(
                f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape; "
                "upsample predictions to label resolution first"
            )
        labels = labels.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        predictions = predictions.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        scored = labels != IGNORE_INDEX
        labels = labels[scored]
        predictions = predictions[scored]
        k = self.num_classes
        # One host sync per batch: evaluation only, never in a training step.
        if bool(((labels < 0) | (labels >= k)).any()):
            bad = torch.unique(labels[(labels < 0) | (labels >= k)]).tolist()
            raise ValueError(f"labels contain {bad}, which are neither train IDs 0..{k - 1} nor {IGNORE_INDEX}")
        no_class = (predictions < 0) | (predictions >= k)
        predictions = predictions.masked_fill(no_class, k)
        counts = torch.bincount(labels * (k + 1) + predictions, minlength=k * (k + 1))
        self.matrix += counts.reshape(k, k + 1)

    def all_reduce(self) -> None:
        """Sums the matrix over all DDP processes; does nothing without a process group."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """Scores from the accumulated matrix, in percent.

        Returns:
            ``per_class_iou`` (list of K floats, NaN for classes with a zero denominator),
            ``miou`` (NaN-skipping mean), ``per_class_accuracy``, ``mean_accuracy`` (mean over
            classes present in the ground truth), ``pixel_accuracy``, ``num_pixels``.
        """
        matrix = self.matrix.double().cpu()
        k = self.num_classes
        true_positive = matrix.diagonal()
        ground_truth_area = matrix.sum(dim=1)
        predicted_area = matrix[:, :k].sum(dim=0)
        union = ground_truth_area + predicted_area - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan) * 100
        accuracy = torch.where(ground_truth_area > 0, true_positive / ground_truth_area.clamp(min=1), torch.nan) * 100
        num_pixels = ground_truth_area.sum()
        return {
            "per_class_iou": iou.tolist(),
            "miou": _nanmean(iou.tolist()),
            "per_class_accuracy": accuracy.tolist(),
            "mean_accuracy": _nanmean(accuracy.tolist()),
            "pixel_accuracy": float(true_positive.sum() / num_pixels * 100) if num_pixels > 0 else math.nan,
            "num_pixels": int(num_pixels),
        }


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def metrics_dict(scores: dict[str, Any], class_names: Sequence[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics.json`` content (contract in docs/architecture.md).

    Adds ``miou13`` for 16-class (SYNTHIA) models: the mean over the 13-class subset of the same
    per-class IoUs. NaN becomes ``None`` so the file is strict JSON.

    Args:
        scores: the output of ``ConfusionMatrix.compute``.
        class_names: one name per train ID.
        settings: how the numbers were obtained (split, input size, flip, scales, ...).
    """
    if len(class_names) != len(scores["per_class_iou"]):
        raise ValueError(f"{len(class_names)} class names for {len(scores['per_class_iou'])} scored classes")
    per_class_iou = dict(zip(class_names, scores["per_class_iou"]))
    metrics: dict[str, Any] = {
        "miou": scores["miou"],
        "per_class_iou": per_class_iou,
        "num_classes": len(class_names),
        "pixel_accuracy": scores["pixel_accuracy"],
        "mean_accuracy": scores["mean_accuracy"],
        "per_class_accuracy": dict(zip(class_names, scores["per_class_accuracy"])),
        "num_pixels": scores["num_pixels"],
        "settings": dict(settings, mean_over="classes with a non-zero IoU denominator (NaN-skipping)"),
    }
    if len(class_names) == 16:
        metrics["miou13"] = _nanmean([per_class_iou[name] for name in SYNTHIA_13_CLASS_NAMES])
    return _nan_to_none(metrics)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value


def write_metrics(metrics: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Writes ``metrics.json`` and ``metrics.md`` into ``out_dir`` (created if missing).

    ``metrics.md`` has the per-class IoU table laid out like the paper's Table 2 (one row,
    classes in Cityscapes order, then mIoU, and mIoU13 for 16-class models) and a vertical list.

    Returns:
        The paths of the two files.
    """
    out_dir = Path(out_dir)
    json_path = out_dir / "metrics.json"
    write_text_atomically(json_path, json.dumps(metrics, indent=2) + "\n")
    markdown_path = out_dir / "metrics.md"
    write_text_atomically(markdown_path, metrics_markdown(metrics))
    return json_path, markdown_path


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """The text of ``metrics.md`` for a ``metrics_dict`` result."""
    per_class = metrics["per_class_iou"]
    means = [(f"mIoU{metrics['num_classes']}", metrics["miou"])]
    if "miou13" in metrics:
        means.append(("mIoU13", metrics["miou13"]))
    header = list(per_class) + [name for name, _ in means]
    values = [_percent(v) for v in per_class.values()] + [_percent(v) for _, v in means]
    lines = [
        f"# Evaluation: mIoU {_percent(metrics['miou'])}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" for _ in header) + "|",
        "| " + " | ".join(values) + " |",
        "",
        "| class | IoU (%) |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {_percent(value)} |" for name, value in per_class.items()]
    lines += [f"| **{name}** | **{_percent(value)}** |" for name, value in means]
    lines += [
        "",
        f"Pixel accuracy {_percent(metrics['pixel_accuracy'])} %, "
        f"mean accuracy {_percent(metrics['mean_accuracy'])} %.",
        'IoU "–": class absent from both ground truth and prediction, left out of the mean.',
        "",
        "Settings: " + ", ".join(f"{key}={value}" for key, value in metrics["settings"].items()),
        "",
    ]
    return "\n".join(lines)


def summary_line(metrics: dict[str, Any]) -> str:
    """``mIoU19 47.31`` (and ``, mIoU13 ...`` for 16-class models) for the console."""

    def number(value: float | None) -> str:
        return "n/a (no class scored)" if value is None else f"{value:.2f}"

    line = f"mIoU{metrics['num_classes']} {number(metrics['miou'])}"
    if "miou13" in metrics:
        line += f", mIoU13 {number(metrics['miou13'])}"
    return line


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"
