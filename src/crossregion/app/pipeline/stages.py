"""The kinds of pipeline stage: a training run, a pseudo-label store, target BatchNorm statistics."""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path
from typing import Any

from torch import nn

from crossregion.app.pipeline.analysis import regime_of_store
from crossregion.app.pipeline.cache import StageRecord, Stages
from crossregion.app.pipeline.config import (
    PipelineConfig,
    StageSpec,
    pipeline_device,
    target_dataset,
)
from crossregion.config.io import (
    apply_overrides,
    config_from_dict,
    config_identity,
    config_to_dict,
    find_preset,
    load_raw,
)
from crossregion.eval.batchnorm import reestimate_batchnorm


def resolve_training_config(
    cfg: PipelineConfig, spec: StageSpec, placeholders: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stage's resolved training config as plain data (preset, roots, common then own
    overrides), and its identity (the values that differ from the defaults; what the stage's hash
    reads)."""
    raw = load_raw(spec.preset)
    data_section = raw.get("data") or {}
    for key in ("source", "target", "target_val"):
        dataset = data_section.get(key)
        if isinstance(dataset, dict) and dataset.get("name") in cfg.dataset_roots:
            dataset["root"] = cfg.dataset_roots[dataset["name"]]
    overrides = []
    for text in (*cfg.common_overrides, *spec.overrides):
        try:
            # Each value as a quoted YAML scalar: a path holding "#" or ": " stays one string.
            overrides.append(string.Template(text).substitute({k: json.dumps(v) for k, v in placeholders.items()}))
        except KeyError as error:
            raise ValueError(
                f"override {text!r} of preset {spec.preset} uses placeholder ${error.args[0]}, which this "
                f"stage does not have; available here: {sorted(placeholders) or 'none'}"
            ) from error
    resolved = config_from_dict(apply_overrides(raw, overrides), source=str(find_preset(spec.preset)))
    return config_to_dict(resolved), config_identity(resolved)


def training_stage(
    stages: Stages,
    cfg: PipelineConfig,
    name: str,
    spec: StageSpec,
    placeholders: dict[str, str],
    upstream: list[StageRecord],
) -> StageRecord:
    from crossregion.app.train import train

    resolved, _ = resolve_training_config(cfg, spec, placeholders)
    # The hash reads the stage files the config names relative to the run folder, however this run
    # spells it; what they hold is in the upstream records' hashes.
    _, identity = resolve_training_config(cfg, spec, {key: stages.relative(path) for key, path in placeholders.items()})

    def work(folder: Path) -> dict[str, Any]:
        checkpoint = train(config_from_dict(resolved, source=name), folder, resume=True)
        return {"checkpoint": checkpoint, **evaluate_checkpoint(cfg, checkpoint, folder / "eval")}

    payload = {
        "kind": "train",
        "config": identity,
        "upstream": [r.hash for r in upstream],
        "target": dataclasses.asdict(cfg.target),
    }
    return stages.run(name, payload, work)


def pseudo_label_stage(stages: Stages, cfg: PipelineConfig, name: str, model: StageRecord) -> StageRecord:
    from crossregion.app import pseudo_label

    def work(folder: Path) -> dict[str, Any]:
        store = folder / "store"
        rule = cfg.pseudo_label
        pseudo_label.write_pseudo_labels(
            model.outputs["checkpoint"],
            dataset=cfg.target.name,
            root=cfg.target.root,
            split=cfg.target.train_split,
            output=store,
            input_size=cfg.target.input_size,
            threshold=rule.threshold,
            rare_share=rule.rare_share,
            rare_factor=rule.rare_factor,
            device=cfg.device,
            workers=0,
        )
        return {"store": store, **regime_of_store(cfg, store)}

    payload = {
        "kind": "pseudo_label",
        "upstream": [model.hash],
        "target": dataclasses.asdict(cfg.target),
        "settings": dataclasses.asdict(cfg.pseudo_label),
    }
    return stages.run(name, payload, work)


def bn_target_stage(stages: Stages, cfg: PipelineConfig, name: str, model: StageRecord) -> StageRecord:
    def work(folder: Path) -> dict[str, Any]:
        from crossregion.models.checkpoint_io import load_segmenter

        device = pipeline_device(cfg)
        segmenter, info = load_segmenter(model.outputs["checkpoint"], device=device)
        images = target_dataset(cfg, info["num_classes"], labelled=False)
        if not reestimate_batchnorm(segmenter, images, device):
            return {"miou": None, "note": "the model has no trainable BatchNorm (frozen BN): nothing to re-estimate"}
        return _evaluate_segmenter(cfg, segmenter, info["num_classes"], folder / "eval")

    payload = {"kind": "bn_target", "upstream": [model.hash], "target": dataclasses.asdict(cfg.target)}
    return stages.run(name, payload, work)


# ------------------------------------------------------------------------------------ evaluation
def evaluate_checkpoint(cfg: PipelineConfig, checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    from crossregion.models.checkpoint_io import load_segmenter

    segmenter, info = load_segmenter(checkpoint, device=pipeline_device(cfg))
    return _evaluate_segmenter(cfg, segmenter, info["num_classes"], out_dir)


def _evaluate_segmenter(cfg: PipelineConfig, segmenter: nn.Module, num_classes: int, out_dir: Path) -> dict[str, Any]:
    from crossregion.eval.evaluate import evaluate_segmenter
    from crossregion.eval.metrics import write_metrics

    dataset = target_dataset(cfg, num_classes, labelled=True, split=cfg.target.val_split)
    metrics = evaluate_segmenter(
        segmenter, dataset, input_size=cfg.target.input_size, device=pipeline_device(cfg), progress=False
    )
    write_metrics(metrics, out_dir)
    return {"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"]}


def cda_stage(stages: Stages, cfg: PipelineConfig, method: str, source: StageRecord) -> StageRecord:
    """The CDA model of ``method``: one stage ``01_cda_<m>``, or a chain ``01_cda_<m>_1``, ``_2``...
    where each starts from the previous checkpoint (``$previous_checkpoint``; the source model's
    for the first). Returns the last stage."""
    spec = cfg.cda[method]
    chain = spec if isinstance(spec, tuple) else (spec,)
    previous = source
    for index, step in enumerate(chain, start=1):
        name = f"01_cda_{method}" if len(chain) == 1 else f"01_cda_{method}_{index}"
        placeholders = {
            "source_checkpoint": source.outputs["checkpoint"],
            "previous_checkpoint": previous.outputs["checkpoint"],
        }
        upstream = [source] if previous is source else [source, previous]
        previous = training_stage(stages, cfg, name, step, placeholders, upstream)
    return previous


def with_overrides(spec: StageSpec, overrides: tuple[str, ...] | None) -> StageSpec:
    """``spec`` with ``overrides`` applied after its own (unchanged without any)."""
    return spec if not overrides else dataclasses.replace(spec, overrides=(*spec.overrides, *overrides))
