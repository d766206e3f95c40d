"""``crossregion pipeline --config PRESET --output DIR [key=value ...]``: the paper's Fig. 2 in one command.

Stages, each in its own folder of ``DIR``::

    00_source                 source-only training (stage 0)
    00_oracle                 source_only on labelled target train (optional; a reference only)
    01_cda_<m>                CDA method <m> from the source model (stage 1), one per CDA method
    01_bn_target_<m>          no training: the CDA model with BatchNorm statistics re-estimated on target train
    02_pseudo_<m>             pseudo-label store of the CDA model on target train (stage 2)
    03_cra_<m>                CRA from the CDA model and its store (stage 3)
    03_<baseline>_<m>         Table-3 baselines (pseudo_label_only, entropy_min) on the same store (optional)
    04_pseudo_cra_<m>         pseudo labels of the CRA model (optional, for self-distillation)
    05_self_distill_<m>       self-distillation on them (optional, stage 4)

Every stage writes ``stage.json`` with a hash of its resolved config and of the stages it reads
(and, for the report, its wall time and the machine and versions it ran with);
a stage whose ``stage.json`` is complete with the same hash is skipped, a changed hash deletes
the folder and reruns it (and, through the chained hashes, everything after it). An
interrupted training stage resumes from its ``last.pth``; an interrupted store resumes per image.

The pipeline config (``configs/pipelines/*.yaml``) names a training preset and overrides per
stage. Overrides may use the placeholders ``$source_checkpoint``, ``$cda_checkpoint``,
``$pseudo_labels`` (the store the stage trains on) and ``$cra_checkpoint``, so the wiring
between stages is visible in the preset (``$$`` is a literal dollar). Target-train ground truth is read only by the report
(trusted-pixel precision, error shares), never by a training stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import platform
import shutil
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn

from crossregion.config.io import (
    PIPELINE_PRESET_DIR,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    find_preset,
    load_raw,
)
from crossregion.files import check_output_folder, write_text_atomically

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
BASELINE_TITLES = {"pseudo_label_only": "pseudo-label only", "entropy_min": "entropy min."}


# ------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class StageSpec:
    """A training stage: a ``crossregion train`` preset plus dotted overrides (placeholders allowed)."""

    preset: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetSpec:
    """The target dataset: ``train_split`` is pseudo-labelled, ``val_split`` scored."""

    name: str
    root: str
    train_split: str = "train"
    val_split: str = "val"
    # (height, width) images are resized to for inference (pseudo labels, evaluation); None = as stored.
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class PseudoLabelSpec:
    """Stage-2 settings; the same λ and rare-class rule measure the regime in the report."""

    threshold: float = 0.01
    rare_share: float = 0.01
    rare_factor: float = 0.5


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run. ``cda`` maps a CDA label to its stage; ``cda_methods`` picks which run."""

    target: TargetSpec
    source: StageSpec
    cda: dict[str, StageSpec]
    cda_methods: tuple[str, ...]
    cra: StageSpec
    # dataset name -> root: replaces ``data.*.root`` of every training stage whose dataset has that name.
    dataset_roots: dict[str, str] = field(default_factory=dict)
    # Applied to every training stage before its own overrides (e.g. engine.seed=1).
    common_overrides: tuple[str, ...] = ()
    oracle: StageSpec | None = None
    # Table-3 baselines, keyed by method name (pseudo_label_only, entropy_min); empty = none.
    baselines: dict[str, StageSpec] = field(default_factory=dict)
    # The CDA methods the baselines run after; None = every one in cda_methods (the paper's
    # Table 3 compares them after FADA only).
    baseline_methods: tuple[str, ...] | None = None
    self_distill: StageSpec | None = None
    pseudo_label: PseudoLabelSpec = field(default_factory=PseudoLabelSpec)
    device: str = "auto"
    # Target-val images in the Fig.-3-style panel.
    panel_images: int = 3

    def __post_init__(self) -> None:
        unknown = [name for name in self.cda_methods if name not in self.cda]
        if unknown or not self.cda_methods:
            raise ValueError(
                f"cda_methods {list(self.cda_methods)} must name at least one of the configured cda stages "
                f"{sorted(self.cda)}; add the stage under cda: or fix cda_methods"
            )
        unknown = [name for name in self.baseline_methods or () if name not in self.cda_methods]
        if unknown:
            raise ValueError(f"baseline_methods {unknown} are not in cda_methods {list(self.cda_methods)}")
        unknown = [name for name in self.baselines if name not in BASELINE_TITLES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; known: {sorted(BASELINE_TITLES)}")
        if self.panel_images < 0:
            raise ValueError(f"panel_images must be >= 0, got {self.panel_images}")


def load_pipeline_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """A pipeline preset (name in ``configs/pipelines/`` or YAML path) with ``key=value`` overrides applied."""
    data = apply_overrides(load_raw(name_or_path, PIPELINE_PRESET_DIR), overrides)
    try:
        return _pipeline_from_dict(data)
    except (TypeError, ValueError, KeyError) as error:
        message = error.args[0] if error.args else str(error)
        raise ValueError(f"pipeline config {name_or_path}: {message}") from error


def _stage_spec(data: Any, key: str) -> StageSpec:
    if isinstance(data, str):
        return StageSpec(preset=data)
    if not isinstance(data, dict) or "preset" not in data:
        raise ValueError(f"{key} must be a preset name or a mapping with preset: and overrides:, got {data!r}")
    _check_keys(data, StageSpec, key)
    return StageSpec(preset=str(data["preset"]), overrides=tuple(str(o) for o in data.get("overrides") or ()))


def _check_keys(data: dict, cls: type, key: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [name for name in data if name not in names]
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} in {key}; valid keys: {', '.join(names)}")


def _pipeline_from_dict(data: dict[str, Any]) -> PipelineConfig:
    _check_keys(data, PipelineConfig, "the pipeline config")
    for required in ("target", "source", "cda", "cda_methods", "cra"):
        if required not in data:
            raise KeyError(f"missing key {required!r}")
    target = dict(data["target"])
    _check_keys(target, TargetSpec, "target")
    if target.get("input_size") is not None:
        target["input_size"] = tuple(int(size) for size in target["input_size"])
    pseudo = dict(data.get("pseudo_label") or {})
    _check_keys(pseudo, PseudoLabelSpec, "pseudo_label")
    if not isinstance(data["cda"], dict):
        raise ValueError(f"cda must map a CDA label to its stage, got {data['cda']!r}")
    return PipelineConfig(
        target=TargetSpec(**target),
        source=_stage_spec(data["source"], "source"),
        cda={name: _stage_spec(spec, f"cda.{name}") for name, spec in data["cda"].items()},
        cda_methods=tuple(str(name) for name in data["cda_methods"]),
        cra=_stage_spec(data["cra"], "cra"),
        dataset_roots={str(k): str(v) for k, v in (data.get("dataset_roots") or {}).items()},
        common_overrides=tuple(str(o) for o in data.get("common_overrides") or ()),
        oracle=None if data.get("oracle") is None else _stage_spec(data["oracle"], "oracle"),
        baselines={name: _stage_spec(spec, f"baselines.{name}") for name, spec in (data.get("baselines") or {}).items()},
        baseline_methods=None if data.get("baseline_methods") is None
        else tuple(str(name) for name in data["baseline_methods"]),
        self_distill=None if data.get("self_distill") is None else _stage_spec(data["self_distill"], "self_distill"),
        pseudo_label=PseudoLabelSpec(**{k: float(v) for k, v in pseudo.items()}),
        device=str(data.get("device", "auto")),
        panel_images=int(data.get("panel_images", 3)),
    )


# ------------------------------------------------------------------------------------ stages
def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    """What a finished stage hands to later ones: its folder, hash and outputs."""

    name: str
    folder: Path
    hash: str
    skipped: bool
    outputs: dict[str, Any]


class Stages:
    """Runs stages under ``output``: skip when complete with the same hash, else (re)run."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.records: dict[str, StageRecord] = {}

    def run(self, name: str, payload: Any, work: Callable[[Path], dict[str, Any]]) -> StageRecord:
        """Run ``work(folder) -> outputs`` unless ``folder/stage.json`` is complete for ``payload``."""
        folder = self.output / name
        stage_hash = _hash(payload)
        marker = folder / STAGE_FILE
        state = json.loads(marker.read_text()) if marker.exists() else None
        if state is not None and state["hash"] == stage_hash and state["complete"]:
            logger.info("stage %s: up to date, skipped", name)
            record = StageRecord(name, folder, stage_hash, True, state["outputs"])
        else:
            if state is not None and state["hash"] != stage_hash:
                logger.info("stage %s: config changed, rerunning it from scratch", name)
                shutil.rmtree(folder)
            elif state is not None:
                logger.info("stage %s: resuming an interrupted run", name)
            folder.mkdir(parents=True, exist_ok=True)
            _write_json(marker, {"hash": stage_hash, "complete": False, "outputs": {}, "payload": payload})
            start = time.perf_counter()
            outputs = work(folder)
            # Wall time and machine are for the report only; the hash (what decides a rerun) ignores them.
            _write_json(marker, {"hash": stage_hash, "complete": True, "outputs": outputs, "payload": payload,
                                 "wall_seconds": time.perf_counter() - start, "environment": environment()})
            record = StageRecord(name, folder, stage_hash, False, outputs)
        self.records[name] = record
        return record


def environment() -> dict[str, str]:
    """The machine and the versions a stage ran with."""
    from crossregion.engine.checkpoint import code_version

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "crossregion": code_version(),
    }


def _write_json(path: Path, data: Any) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, default=str) + "\n")


def resolve_training_config(cfg: PipelineConfig, spec: StageSpec, placeholders: dict[str, str]) -> dict[str, Any]:
    """The stage's resolved training config as plain data: preset, roots, common then own overrides."""
    raw = load_raw(spec.preset)
    data_section = raw.get("data") or {}
    for key in ("source", "target", "target_val"):
        dataset = data_section.get(key)
        if isinstance(dataset, dict) and dataset.get("name") in cfg.dataset_roots:
            dataset["root"] = cfg.dataset_roots[dataset["name"]]
    overrides = []
    for text in (*cfg.common_overrides, *spec.overrides):
        try:
            overrides.append(string.Template(text).substitute(placeholders))
        except KeyError as error:
            raise ValueError(
                f"override {text!r} of preset {spec.preset} uses placeholder ${error.args[0]}, which this "
                f"stage does not have; available here: {sorted(placeholders) or 'none'}"
            ) from error
    data = apply_overrides(raw, overrides)
    return config_to_dict(config_from_dict(data, source=str(find_preset(spec.preset))))


def training_stage(stages: Stages, cfg: PipelineConfig, name: str, spec: StageSpec,
                    placeholders: dict[str, str], upstream: list[StageRecord]) -> StageRecord:
    from crossregion.engine.launch import train

    resolved = resolve_training_config(cfg, spec, placeholders)

    def work(folder: Path) -> dict[str, Any]:
        checkpoint = train(config_from_dict(resolved, source=name), folder, resume=True)
        return {"checkpoint": str(checkpoint), **_evaluate_checkpoint(cfg, checkpoint, folder / "eval")}

    payload = {"kind": "train", "config": resolved, "upstream": [r.hash for r in upstream],
               "target": dataclasses.asdict(cfg.target)}
    return stages.run(name, payload, work)


def pseudo_label_stage(stages: Stages, cfg: PipelineConfig, name: str, model: StageRecord) -> StageRecord:
    from crossregion import pseudo_label

    def work(folder: Path) -> dict[str, Any]:
        store = folder / "store"
        argv = ["--checkpoint", model.outputs["checkpoint"], "--dataset", cfg.target.name,
                "--root", cfg.target.root, "--split", cfg.target.train_split, "--output", str(store),
                "--threshold", str(cfg.pseudo_label.threshold), "--rare-share", str(cfg.pseudo_label.rare_share),
                "--rare-factor", str(cfg.pseudo_label.rare_factor), "--device", cfg.device, "--workers", "0"]
        if cfg.target.input_size is not None:
            argv += ["--input-size", str(cfg.target.input_size[1]), str(cfg.target.input_size[0])]
        parser = argparse.ArgumentParser(prog="crossregion pseudo-label")
        pseudo_label.add_arguments(parser)
        pseudo_label.main(parser.parse_args(argv))
        return {"store": str(store), **regime_of_store(cfg, store)}

    payload = {"kind": "pseudo_label", "upstream": [model.hash], "target": dataclasses.asdict(cfg.target),
               "settings": dataclasses.asdict(cfg.pseudo_label)}
    return stages.run(name, payload, work)


def bn_target_stage(stages: Stages, cfg: PipelineConfig, name: str, model: StageRecord) -> StageRecord:
    def work(folder: Path) -> dict[str, Any]:
        from crossregion.models.checkpoint_io import load_segmenter

        device = _device(cfg)
        segmenter, info = load_segmenter(model.outputs["checkpoint"], device=device)
        images = _target_images(cfg, info["num_classes"], labelled=False)
        if not reestimate_batchnorm(segmenter, images, device):
            return {"miou": None, "note": "the model has no trainable BatchNorm (frozen BN): nothing to re-estimate"}
        return _evaluate_segmenter(cfg, segmenter, info["num_classes"], folder / "eval")

    payload = {"kind": "bn_target", "upstream": [model.hash], "target": dataclasses.asdict(cfg.target)}
    return stages.run(name, payload, work)


# ------------------------------------------------------------------------------------ evaluation
def _device(cfg: PipelineConfig) -> torch.device:
    from crossregion.engine.dist import select_device

    return select_device(cfg.device, option="device")


def _target_images(cfg: PipelineConfig, num_classes: int, *, labelled: bool, split: str | None = None):
    from crossregion.data.datasets import build_dataset

    return build_dataset(cfg.target.name, cfg.target.root, split or cfg.target.train_split,
                         num_classes=num_classes, labelled=labelled)


def _evaluate_checkpoint(cfg: PipelineConfig, checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    from crossregion.models.checkpoint_io import load_segmenter

    segmenter, info = load_segmenter(checkpoint, device=_device(cfg))
    return _evaluate_segmenter(cfg, segmenter, info["num_classes"], out_dir)


def _evaluate_segmenter(cfg: PipelineConfig, segmenter: nn.Module, num_classes: int, out_dir: Path) -> dict[str, Any]:
    from crossregion.eval.evaluate import evaluate_segmenter
    from crossregion.eval.metrics import write_metrics

    dataset = _target_images(cfg, num_classes, labelled=True, split=cfg.target.val_split)
    metrics = evaluate_segmenter(segmenter, dataset, input_size=cfg.target.input_size, device=_device(cfg),
                                 progress=False)
    write_metrics(metrics, out_dir)
    return {"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"]}


@torch.no_grad()
def reestimate_batchnorm(segmenter: nn.Module, dataset, device: torch.device) -> bool:
    """Replace every BatchNorm's running statistics by their average over ``dataset`` (no labels used).

    Cumulative averaging (``momentum=None``) over one pass at the inference input size; returns
    False when the model has no ``nn.BatchNorm2d`` (FrozenBatchNorm has fixed statistics).
    """
    from crossregion.data.transforms import eval_transform

    norms = [module for module in segmenter.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    saved_transform, dataset.transform = dataset.transform, eval_transform(size=None)
    segmenter.to(device).eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        for index in range(len(dataset)):
            segmenter(dataset[index]["image"].unsqueeze(0).to(device))
    finally:
        dataset.transform = saved_transform
    segmenter.eval()
    return True


def _trusted_map(cfg: PipelineConfig, pseudo_label: torch.Tensor, entropy: torch.Tensor,
                 factors: torch.Tensor) -> torch.Tensor:
    from crossregion.methods.cra_losses import region_masks, scaled_entropy

    trusted, _ = region_masks(scaled_entropy(entropy, pseudo_label, factors), cfg.pseudo_label.threshold)
    return trusted


def regime_of_store(cfg: PipelineConfig, store_path: Path) -> dict[str, Any]:
    """The paper's premises, measured against target-train ground truth (report only).

    Returns the trusted fraction, trusted-pixel precision (pseudo label = ground truth among
    trusted pixels), the untrusted share and the share of all pseudo-label errors that lie in the
    untrusted region; pixels whose ground truth is ignore are left out.
    """
    from crossregion.data.pseudo_labels import PseudoLabelStore
    from crossregion.methods.cra_losses import rare_class_factors

    store = PseudoLabelStore(store_path)
    factors = rare_class_factors(store.class_pixel_counts, cfg.pseudo_label.rare_share, cfg.pseudo_label.rare_factor)
    dataset = _target_images(cfg, store.num_classes, labelled=True)
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
    from crossregion.methods.cra_losses import rare_class_factors
    from crossregion.models.checkpoint_io import load_segmenter

    device = _device(cfg)
    segmenter, _ = load_segmenter(checkpoint, device=device)
    store = PseudoLabelStore(store_path)
    factors = rare_class_factors(store.class_pixel_counts, cfg.pseudo_label.rare_share, cfg.pseudo_label.rare_factor)
    dataset = _target_images(cfg, store.num_classes, labelled=True)
    dataset.transform = eval_transform(size=cfg.target.input_size)
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
def write_fig3_panel(cfg: PipelineConfig, path: Path, cda_checkpoint: str, cra_checkpoint: str,
                     store_path: str) -> Path:
    """image | CDA prediction | trusted/untrusted map | CRA prediction | ground truth, for target-val images.

    The trusted map applies the stage-2 rule (λ, rare classes from the store's counts) to the
    CDA model's entropy on each val image.
    """
    from crossregion.data.pseudo_labels import PseudoLabelStore
    from crossregion.data.transforms import eval_transform
    from crossregion.eval.inference import predict_probs
    from crossregion.eval.visualize import colorize, render_trusted, write_panel
    from crossregion.methods.cra_losses import normalized_entropy, rare_class_factors
    from crossregion.models.checkpoint_io import load_segmenter

    device = _device(cfg)
    cda, _ = load_segmenter(cda_checkpoint, device=device)
    cra, _ = load_segmenter(cra_checkpoint, device=device)
    store = PseudoLabelStore(store_path)
    factors = rare_class_factors(store.class_pixel_counts, cfg.pseudo_label.rare_share, cfg.pseudo_label.rare_factor)
    dataset = _target_images(cfg, store.num_classes, labelled=True, split=cfg.target.val_split)
    palette = dataset.label_set.palette
    transform = eval_transform(size=cfg.target.input_size)
    columns: dict[str, list] = {"image": [], "CDA": [], "trusted (white) / untrusted": [], "CDA + CRA": [],
                                "ground truth": []}
    for index in range(min(cfg.panel_images, len(dataset))):
        raw = dataset[index]
        truth = raw["mask"]
        image = transform(dict(raw))["image"].unsqueeze(0).to(device)
        cda_probs = predict_probs(cda, image, output_size=tuple(truth.shape))
        cda_label = cda_probs.argmax(dim=1)[0]
        trusted = _trusted_map(cfg, cda_label.cpu(), normalized_entropy(cda_probs)[0].cpu(), factors)
        cra_label = predict_probs(cra, image, output_size=tuple(truth.shape)).argmax(dim=1)[0]
        columns["image"].append(raw["image"])
        columns["CDA"].append(colorize(cda_label, palette))
        columns["trusted (white) / untrusted"].append(render_trusted(trusted))
        columns["CDA + CRA"].append(colorize(cra_label, palette))
        columns["ground truth"].append(colorize(truth, palette))
    return write_panel(path, list(columns.items()))


# ------------------------------------------------------------------------------------ the run
def run_pipeline(cfg: PipelineConfig, output: str | Path) -> dict[str, Any]:
    """Run every stage ``cfg`` asks for (skipping up-to-date ones); write and return the results."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output / "pipeline.yaml", yaml.safe_dump(_plain(dataclasses.asdict(cfg)), sort_keys=False))
    stages = Stages(output)
    source = training_stage(stages, cfg, "00_source", cfg.source, {}, [])
    results: dict[str, Any] = {"source_only": source.outputs["miou"], "oracle": None, "methods": {}}
    if cfg.oracle is not None:
        results["oracle"] = training_stage(stages, cfg, "00_oracle", cfg.oracle, {}, []).outputs["miou"]
    for method in cfg.cda_methods:
        results["methods"][method] = _run_method(stages, cfg, method, source, output)
    results["stages"] = {name: {"folder": str(r.folder), "hash": r.hash, "skipped": r.skipped}
                         for name, r in stages.records.items()}
    _write_json(output / "results.json", results)
    write_text_atomically(output / "results.md", results_markdown(results))
    return results


def _run_method(stages: Stages, cfg: PipelineConfig, method: str, source: StageRecord, output: Path) -> dict[str, Any]:
    cda = training_stage(stages, cfg, f"01_cda_{method}", cfg.cda[method],
                          {"source_checkpoint": source.outputs["checkpoint"]}, [source])
    bn_target = bn_target_stage(stages, cfg, f"01_bn_target_{method}", cda)
    pseudo = pseudo_label_stage(stages, cfg, f"02_pseudo_{method}", cda)
    wiring = {"cda_checkpoint": cda.outputs["checkpoint"], "pseudo_labels": pseudo.outputs["store"]}
    cra = training_stage(stages, cfg, f"03_cra_{method}", cfg.cra, wiring, [cda, pseudo])
    row: dict[str, Any] = {
        "cda": cda.outputs["miou"],
        "bn_target": bn_target.outputs["miou"],
        "cra": cra.outputs["miou"],
        **{key: pseudo.outputs[key] for key in ("trusted_fraction", "trusted_precision", "untrusted_share",
                                                "pseudo_label_accuracy")},
        "error_share_untrusted_cda": pseudo.outputs["error_share_untrusted"],
    }
    analysis = stages.run(
        f"03_cra_{method}_analysis", {"kind": "analysis", "upstream": [cra.hash, pseudo.hash]},
        lambda folder: {"error_share_untrusted": error_share_untrusted(cfg, cra.outputs["checkpoint"],
                                                                        pseudo.outputs["store"])},
    )
    row["error_share_untrusted_cra"] = analysis.outputs["error_share_untrusted"]
    with_baselines = cfg.baseline_methods is None or method in cfg.baseline_methods
    for baseline, spec in (cfg.baselines if with_baselines else {}).items():
        record = training_stage(stages, cfg, f"03_{baseline}_{method}", spec, wiring, [cda, pseudo])
        row[baseline] = record.outputs["miou"]
    if cfg.self_distill is not None:
        cra_pseudo = pseudo_label_stage(stages, cfg, f"04_pseudo_cra_{method}", cra)
        distilled = training_stage(
            stages, cfg, f"05_self_distill_{method}", cfg.self_distill,
            {"cra_checkpoint": cra.outputs["checkpoint"], "pseudo_labels": cra_pseudo.outputs["store"]},
            [cra, cra_pseudo],
        )
        row["self_distill"] = distilled.outputs["miou"]
    if cfg.panel_images:
        panel = output / f"panel_{method}.png"
        write_fig3_panel(cfg, panel, cda.outputs["checkpoint"], cra.outputs["checkpoint"], pseudo.outputs["store"])
        row["panel"] = str(panel)
    return row


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# ------------------------------------------------------------------------------------ report
def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


@dataclass(frozen=True)
class ResultsTable:
    """One table of the results, as text cells; ``results.md`` and the HTML report both render it."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    lead: str = ""  # a line shown above the table


def results_tables(results: dict[str, Any]) -> list[ResultsTable]:
    """The regime, Table 1 (CDA vs +CRA) and, with baselines, Table 3 and self-distillation."""
    methods = results["methods"]
    tables = [
        ResultsTable(
            "Regime",
            ("CDA", "CDA mIoU", "CDA + target BN stats", "trusted fraction", "trusted precision",
             "pseudo-label accuracy", "errors in untrusted (CDA → CRA)"),
            [(name, _number(row["cda"]), _number(row["bn_target"]), _percent(row["trusted_fraction"]),
              _percent(row["trusted_precision"]), _percent(row["pseudo_label_accuracy"]),
              f"{_percent(row['error_share_untrusted_cda'])} → {_percent(row['error_share_untrusted_cra'])}")
             for name, row in methods.items()],
            lead=f"source-only {_number(results['source_only'])} · oracle {_number(results['oracle'])}",
        ),
        ResultsTable(
            "Table 1: CRA after each CDA method",
            ("CDA method", "base mIoU", "+CRA mIoU", "Δ"),
            [(name, _number(row["cda"]), _number(row["cra"]), _delta(row["cda"], row["cra"]))
             for name, row in methods.items()],
        ),
    ]
    baselines = [b for b in BASELINE_TITLES if any(b in row for row in methods.values())]
    if baselines:
        tables.append(ResultsTable(
            "Table 3: CRA against the baselines on the same pseudo labels",
            ("CDA", "CDA mIoU", *(BASELINE_TITLES[b] for b in baselines), "CRA"),
            [(name, _number(row["cda"]), *(_number(row.get(b)) for b in baselines), _number(row["cra"]))
             for name, row in methods.items()],
        ))
    if any("self_distill" in row for row in methods.values()):
        tables.append(ResultsTable(
            "Self-distillation",
            ("CDA", "+CRA", "+CRA +SD"),
            [(name, _number(row["cra"]), _number(row.get("self_distill"))) for name, row in methods.items()],
        ))
    return tables


def results_markdown(results: dict[str, Any]) -> str:
    """``results.md``: the tables of ``results_tables`` and the Fig.-3 panels."""
    lines = [
        "# Pipeline results",
        "",
        "mIoU (%) on target val. The oracle trains on target labels and is a reference only; the "
        "trusted-pixel figures use target-train ground truth in this report, never in training.",
    ]
    for table in results_tables(results):
        lines += ["", f"## {table.title}", ""]
        if table.lead:
            lines += [table.lead, ""]
        lines += ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    panels = [(name, row["panel"]) for name, row in results["methods"].items() if row.get("panel")]
    if panels:
        lines += ["", "## Fig. 3: image | CDA | trusted/untrusted | CDA + CRA | ground truth", ""]
        lines += [f"![{name}]({Path(path).name})" for name, path in panels]
    return "\n".join(lines) + "\n"


def _delta(before: float | None, after: float | None) -> str:
    return "–" if before is None or after is None else f"{after - before:+.2f}"


# ------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline preset (e.g. demo, gta5_fada_r101) or YAML path")
    parser.add_argument("--output", required=True, type=Path, help="run folder: one sub-folder per stage, results.*")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides of the pipeline config, e.g. cda_methods=[fada] oracle=null")


def main(args: argparse.Namespace) -> int:
    from crossregion.report import write_run_report

    check_output_folder(args.output)
    cfg = load_pipeline_config(args.config, args.overrides)
    run_pipeline(cfg, args.output)
    print((args.output / "results.md").read_text())
    print(f"wrote {args.output / 'results.json'} and {args.output / 'results.md'}")
    report = write_run_report(args.output)
    if report is not None:
        print(f"report: {report} (open it in any browser)")
    return 0
