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


@torch.no_grad()
def error_share_untrusted(cfg: PipelineConfig, checkpoint: str, store_path: str) -> float:
    """Share of a model's target-train errors that lie in the store's untrusted region (report only)."""
    from crossregion.data.pseudo_labels import PseudoLabelStore
    from crossregion.data.transforms import eval_transform
    from crossregion.eval.inference import predict_probs
    from crossregion.models.checkpoint_io import load_segmenter
    from crossregion.trust import rare_class_factors

    device = pipeline_device(cfg)
    segmenter, _ = load_segmenter(checkpoint, device=device)
    store = PseudoLabelStore(store_path)
    factors = rare_class_factors(store.class_pixel_counts, cfg.pseudo_label.rare_share, cfg.pseudo_label.rare_factor)
    dataset = target_dataset(cfg, store.num_classes, labelled=True)
    dataset.transform = eval_transform(size=cfg.target.input_size, input_norm=segmenter.input_norm)
    errors = errors_untrusted = 0
    for index, name in enumerate(dataset.names):
        sample = dataset[index]
        truth = sample["mask"]
        probs = predict_probs(segmenter, sample["image"].unsqueeze(0).to(device), output_size=tuple(truth.shape))
        prediction = probs.argmax(dim=1)[0].cpu()
        pseudo, entropy = store.load(name)
        trusted = _trusted_map(cfg, torch.from_numpy(pseudo.astype(np.int64)), torch.from_numpy(entropy), factors)
        wrong = (truth != 255) & (prediction != truth)
        errors += int(wrong.sum())
        errors_untrusted += int((wrong & ~trusted).sum())
    return errors_untrusted / max(errors, 1)


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
