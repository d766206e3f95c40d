"""The paper's premises measured against target-train ground truth, and the Fig.-3 panel (report only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossregion.app.pipeline.config import PipelineConfig, pipeline_device, target_dataset


def _trusted_map(
    cfg: PipelineConfig, pseudo_label: torch.Tensor, entropy: torch.Tensor, factors: torch.Tensor
) -> torch.Tensor:
    from crossregion.trust import region_masks, scaled_entropy

    trusted, _ = region_masks(scaled_entropy(entropy, pseudo_label, factors), cfg.pseudo_label.threshold)
    return trusted


def _samples(dataset):
    """Every sample of ``dataset`` in order, for ``inference_batches``."""
    return (dataset[index] for index in range(len(dataset)))


def regime_of_store(cfg: PipelineConfig, store_path: Path) -> dict[str, Any]:
    """The paper's premises, measured against target-train ground truth (report only).

    Returns the trusted fraction, trusted-pixel precision (pseudo label = ground truth among
    trusted pixels), the untrusted share and the share of all pseudo-label errors that lie in the
    untrusted region; pixels whose ground truth is ignore are left out.
    """
    from crossregion.data.pseudo_labels import PseudoLabelStore
    from crossregion.trust import rare_class_factors

    store = PseudoLabelStore(store_path)
    factors = rare_class_factors(store.class_pixel_counts, cfg.pseudo_label.rare_share, cfg.pseudo_label.rare_factor)
    dataset = target_dataset(cfg, store.num_classes, labelled=True)
    counts = np.zeros(4, dtype=np.int64)  # valid, trusted, trusted & correct, errors
    errors_untrusted = 0
    for index, name in enumerate(dataset.names):
        pseudo, entropy = store.load(name)
        truth = torch.from_numpy(dataset.load_label(index).astype(np.int64))
        pseudo_t = torch.from_numpy(pseudo.astype(np.int64))
        trusted = _trusted_map(cfg, pseudo_t, torch.from_numpy(entropy), factors)
        valid = truth != 255
        wrong = valid & (pseudo_t != truth)
        counts += np.array([valid.sum(), (trusted & valid).sum(), (trusted & valid & ~wrong).sum(), wrong.sum()])
        errors_untrusted += int((wrong & ~trusted).sum())
    valid, trusted, correct, errors = (int(c) for c in counts)
    return {
        "trusted_fraction": trusted / max(valid, 1),
        "trusted_precision": correct / max(trusted, 1),
        "untrusted_share": 1.0 - trusted / max(valid, 1),
        "pseudo_label_accuracy": 1.0 - errors / max(valid, 1),
        "error_share_untrusted": errors_untrusted / max(errors, 1),
    }


def per_class_regime(cfg: PipelineConfig, store_path: str) -> dict[str, dict[str, float | None]]:
    """Per class, against target-train ground truth (report only): the share of its pixels that are
    trusted, the precision of the trusted pixels pseudo-labelled with it, and the share of its pixels
    on a class border (3×3). None where a class has no pixel (or no trusted pixel)."""
    from crossregion.data.pseudo_labels import PseudoLabelStore
    from crossregion.eval.alignment import touches_other_class
    from crossregion.trust import rare_class_factors

    store = PseudoLabelStore(store_path)
    factors = rare_class_factors(store.class_pixel_counts, cfg.pseudo_label.rare_share, cfg.pseudo_label.rare_factor)
    dataset = target_dataset(cfg, store.num_classes, labelled=True)
    k = store.num_classes
    # Per class: pixels, trusted pixels, border pixels (by ground truth); trusted pixels labelled
    # with it and the correct ones among them (by pseudo label).
    counts = np.zeros((5, k), dtype=np.int64)
    for index, name in enumerate(dataset.names):
        pseudo, entropy = store.load(name)
        truth = dataset.load_label(index).astype(np.int64)
        pseudo = pseudo.astype(np.int64)
        trusted = _trusted_map(cfg, torch.from_numpy(pseudo), torch.from_numpy(entropy), factors).numpy()
        valid = truth != 255
        border = touches_other_class(truth)
        counts[0] += np.bincount(truth[valid], minlength=k)
        counts[1] += np.bincount(truth[valid & trusted], minlength=k)
        counts[2] += np.bincount(truth[border], minlength=k)
        counts[3] += np.bincount(pseudo[valid & trusted], minlength=k)[:k]
        counts[4] += np.bincount(pseudo[valid & trusted & (pseudo == truth)], minlength=k)[:k]

    def ratio(top: int, bottom: int) -> float | None:
        return top / bottom if bottom else None

    return {
        class_name: {
            "pixel_share": ratio(counts[0, c], counts[0].sum()),
            "trusted_share": ratio(counts[1, c], counts[0, c]),
            "trusted_precision": ratio(counts[4, c], counts[3, c]),
            "border_share": ratio(counts[2, c], counts[0, c]),
        }
        for c, class_name in enumerate(dataset.label_set.class_names[:k])
    }


@torch.no_grad()
def feature_gap(cfg: PipelineConfig, checkpoint: str, store_path: str, min_cells: int = 20) -> dict[str, Any]:
    """How far a model's untrusted features lie from its trusted features of the same pseudo class.

    On target-train images (no augmentation), for each class c of the store's pseudo labels with at
    least ``min_cells`` feature cells in each region: ||μ_trusted − μ_untrusted|| / s, where s is
    the RMS distance of the trusted cells' features to μ_trusted (the class's own spread). The
    regions and classes are the store's (the CDA model's), so every model is measured on the same
    pixels. CRA's alignment should shrink this; training on trusted pixels alone need not.
    Returns the mean over the classes that qualify and the per-class values (report only).
    """
    from crossregion.data.pseudo_labels import PseudoLabelStore
    from crossregion.data.transforms import eval_transform
    from crossregion.eval.alignment import FeatureGap
    from crossregion.eval.inference import inference_batches
    from crossregion.models.checkpoint_io import load_segmenter
    from crossregion.trust import rare_class_factors

    device = pipeline_device(cfg)
    segmenter, _ = load_segmenter(checkpoint, device=device)
    segmenter.eval()
    store = PseudoLabelStore(store_path)
    factors = rare_class_factors(store.class_pixel_counts, cfg.pseudo_label.rare_share, cfg.pseudo_label.rare_factor)
    dataset = target_dataset(cfg, store.num_classes, labelled=True)
    dataset.transform = eval_transform(size=cfg.target.input_size, input_norm=segmenter.input_norm)
    gap = FeatureGap(store.num_classes)
    for batch in inference_batches(_samples(dataset)):
        images = torch.stack([sample["image"] for sample in batch]).to(device)
        batch_features = segmenter(images)["features"].cpu()
        for sample, features in zip(batch, batch_features):
            pseudo, entropy = store.load(sample["name"])
            pseudo_label = torch.from_numpy(pseudo.astype(np.int64))
            trusted = _trusted_map(cfg, pseudo_label, torch.from_numpy(entropy), factors)
            # The label and region at each feature cell (nearest), so both regions are sampled alike.
            grid = tuple(features.shape[-2:])
            cell_label = torch.nn.functional.interpolate(pseudo_label[None, None].float(), size=grid, mode="nearest")
            cell_trusted = torch.nn.functional.interpolate(trusted[None, None].float(), size=grid, mode="nearest")
            gap.add(features, cell_label[0, 0].long(), cell_trusted[0, 0] > 0.5)
    per_class = dict(zip(dataset.label_set.class_names, gap.per_class(min_cells)))
    values = [v for v in per_class.values() if v is not None]
    return {"mean": sum(values) / len(values) if values else None, "per_class": per_class}


@torch.no_grad()
def error_share_untrusted(cfg: PipelineConfig, checkpoint: str, store_path: str) -> float:
    """Share of a model's target-train errors that lie in the store's untrusted region (report only)."""
    from crossregion.data.pseudo_labels import PseudoLabelStore
    from crossregion.data.transforms import eval_transform
    from crossregion.eval.inference import inference_batches, predict_probs
    from crossregion.models.checkpoint_io import load_segmenter
    from crossregion.trust import rare_class_factors

    device = pipeline_device(cfg)
    segmenter, _ = load_segmenter(checkpoint, device=device)
    store = PseudoLabelStore(store_path)
    factors = rare_class_factors(store.class_pixel_counts, cfg.pseudo_label.rare_share, cfg.pseudo_label.rare_factor)
    dataset = target_dataset(cfg, store.num_classes, labelled=True)
    dataset.transform = eval_transform(size=cfg.target.input_size, input_norm=segmenter.input_norm)
    errors = errors_untrusted = 0
    for batch in inference_batches(_samples(dataset)):
        images = torch.stack([sample["image"] for sample in batch]).to(device)
        label_size = tuple(batch[0]["mask"].shape)
        predictions = predict_probs(segmenter, images, output_size=label_size).argmax(dim=1).cpu()
        for sample, prediction in zip(batch, predictions):
            pseudo, entropy = store.load(sample["name"])
            pseudo_label = torch.from_numpy(pseudo.astype(np.int64))
            trusted = _trusted_map(cfg, pseudo_label, torch.from_numpy(entropy), factors)
            wrong = (sample["mask"] != 255) & (prediction != sample["mask"])
            errors += int(wrong.sum())
            errors_untrusted += int((wrong & ~trusted).sum())
    return errors_untrusted / max(errors, 1)


def alignment_course(metrics_file: Path) -> dict[str, list[tuple[int, float]]]:
    """The diagnostics a region method logged (``diag/*`` in its ``metrics.jsonl``): per key,
    (iteration, value) in order."""
    import json

    course: dict[str, list[tuple[int, float]]] = {}
    if not metrics_file.exists():
        return course
    for line in metrics_file.read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key.startswith("diag/"):
                course.setdefault(key.removeprefix("diag/"), []).append((row["iteration"], value))
    return course


def cra_mechanism(
    cfg: PipelineConfig, cda_checkpoint: str, store_path: str, trained: dict[str, tuple[str, Path]]
) -> dict[str, Any]:
    """What shows CRA's mechanism at work (report only): the share of the CRA model's errors in
    the untrusted region, per-class trusted coverage of the store, the trusted/untrusted feature gap of
    the CDA model and of each trained model (``trained``: name -> (checkpoint, run folder)), and
    the diagnostics each logged over its iterations (D accuracy per region, gradient ratio)."""
    gaps = {"cda": feature_gap(cfg, cda_checkpoint, store_path)["mean"]}
    gaps.update({name: feature_gap(cfg, checkpoint, store_path)["mean"] for name, (checkpoint, _) in trained.items()})
    return {
        "error_share_untrusted": error_share_untrusted(cfg, trained["cra"][0], store_path),
        "per_class_regime": per_class_regime(cfg, store_path),
        "feature_gap": gaps,
        "alignment": {name: alignment_course(folder / "metrics.jsonl") for name, (_, folder) in trained.items()},
    }


@torch.no_grad()
def write_fig3_panel(
    cfg: PipelineConfig, path: Path, cda_checkpoint: str, cra_checkpoint: str, store_path: str
) -> Path:
    """image | CDA prediction | trusted/untrusted map | CRA prediction | ground truth, for target-val images.

    The trusted map applies the stage-2 rule (λ, rare classes from the store's counts) to the
    CDA model's entropy on each val image.
    """
    from crossregion.data.pseudo_labels import PseudoLabelStore
    from crossregion.data.transforms import eval_transform
    from crossregion.eval.inference import predict_probs
    from crossregion.eval.visualize import colorize, render_trusted, write_panel
    from crossregion.models.checkpoint_io import load_segmenter
    from crossregion.trust import normalized_entropy, rare_class_factors

    device = pipeline_device(cfg)
    cda, _ = load_segmenter(cda_checkpoint, device=device)
    cra, _ = load_segmenter(cra_checkpoint, device=device)
    store = PseudoLabelStore(store_path)
    factors = rare_class_factors(store.class_pixel_counts, cfg.pseudo_label.rare_share, cfg.pseudo_label.rare_factor)
    dataset = target_dataset(cfg, store.num_classes, labelled=True, split=cfg.target.val_split)
    palette = dataset.label_set.palette
    cda_transform = eval_transform(size=cfg.target.input_size, input_norm=cda.input_norm)
    cra_transform = eval_transform(size=cfg.target.input_size, input_norm=cra.input_norm)
    columns: dict[str, list] = {
        "image": [],
        "CDA": [],
        "trusted (white) / untrusted": [],
        "CDA + CRA": [],
        "ground truth": [],
    }
    for index in range(min(cfg.panel_images, len(dataset))):
        raw = dataset[index]
        truth = raw["mask"]
        cda_probs = predict_probs(
            cda, cda_transform(dict(raw))["image"].unsqueeze(0).to(device), output_size=tuple(truth.shape)
        )
        cda_label = cda_probs.argmax(dim=1)[0]
        trusted = _trusted_map(cfg, cda_label.cpu(), normalized_entropy(cda_probs)[0].cpu(), factors)
        cra_image = cra_transform(dict(raw))["image"].unsqueeze(0).to(device)
        cra_label = predict_probs(cra, cra_image, output_size=tuple(truth.shape)).argmax(dim=1)[0]
        columns["image"].append(raw["image"])
        columns["CDA"].append(colorize(cda_label, palette))
        columns["trusted (white) / untrusted"].append(render_trusted(trusted))
        columns["CDA + CRA"].append(colorize(cra_label, palette))
        columns["ground truth"].append(colorize(truth, palette))
    return write_panel(path, list(columns.items()))
