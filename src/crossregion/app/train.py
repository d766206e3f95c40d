"""``crossregion train --config PRESET [key=value ...] --output RUN_DIR [--resume]``.

Turns a config into datasets, models, optimisers and a ``Trainer`` and runs it. Also what
``torchrun --nproc_per_node=N -m crossregion train ...`` runs on every rank: the global batch
is split across ranks and only rank 0 writes. Everything that can be wrong with the input
(config, dataset roots, init checkpoint, a resume from another config) fails before the first
iteration.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from crossregion.config.io import config_differences, config_to_dict, load_config, save_config
from crossregion.config.schema import DatasetSpec, ExperimentConfig, ModelConfig
from crossregion.data.transforms import train_transform
from crossregion.dist import (
    barrier,
    broadcast_object,
    get_rank,
    get_world_size,
    init_distributed,
    is_main,
    select_device,
    shutdown_distributed,
    wrap_ddp,
)
from crossregion.engine import amp as precision
from crossregion.engine import checkpoint as ckpt
from crossregion.engine.logging import truncate_metrics
from crossregion.engine.trainer import InfiniteLoader, ResumableClassBalancedSampler, Trainer
from crossregion.files import check_output_folder, exclusive_writer, remove_stale_temp_files
from crossregion.methods import METHODS, UNAUGMENTED_TARGET, Method

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="preset name (see `crossregion dump-config --list`) or YAML path"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=2.5e-4")
    parser.add_argument("--output", required=True, help="run folder: config.yaml, checkpoints, metrics.jsonl")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pth (same config)")


def main(args: argparse.Namespace) -> int:
    check_output_folder(args.output)
    cfg = load_config(args.config, args.overrides)
    final = train(cfg, args.output, resume=args.resume)
    if is_main():
        print(f"final checkpoint: {final}")
    return 0


def train(cfg: ExperimentConfig, run_dir: str | Path, *, resume: bool = False) -> Path:
    """Build everything ``cfg`` describes and train; returns the final checkpoint's path."""
    device = select_device(cfg.engine.device, option="engine.device")
    init_distributed(device)
    try:
        method = build_method(cfg)
        check_datasets(cfg, method)
        seed_everything(cfg)
        segmenter, model_args = build_model(cfg.model)
        datasets = build_train_datasets(cfg, method)
        return run_training(
            cfg,
            run_dir,
            method=method,
            segmenter=segmenter,
            model_args=model_args,
            datasets=datasets,
            device=device,
            resume=resume,
            evaluate=build_evaluator(cfg, device),
        )
    finally:
        shutdown_distributed()


def with_resolved_precision(cfg: ExperimentConfig, device: torch.device) -> ExperimentConfig:
    """``cfg`` with ``engine.amp`` / ``engine.channels_last`` of ``auto`` resolved for ``device``."""
    amp, channels_last = precision.resolve_precision(device, cfg.engine.amp, cfg.engine.channels_last)
    logger.info(
        "precision on %s: engine.amp=%s engine.channels_last=%s (configured %s/%s; native CPU bf16: %s)",
        device.type,
        amp,
        channels_last,
        cfg.engine.amp,
        cfg.engine.channels_last,
        precision.cpu_has_native_bf16(),
    )
    engine = dataclasses.replace(cfg.engine, amp=amp, channels_last=channels_last)
    return dataclasses.replace(cfg, engine=engine)


def build_method(cfg: ExperimentConfig) -> Method:
    """The configured method, after it checked that ``cfg`` has the data it needs."""
    method = METHODS.get(cfg.method.name).from_config(cfg)
    method.check_config(cfg)
    return method


def check_datasets(cfg: ExperimentConfig, method: Method) -> None:
    """Run ``check_dataset`` on every dataset the run reads (rank 0); stop with its reasons."""
    from crossregion.data.check import check_dataset

    kinds = [*method.required_batches, *(["target_val"] if cfg.data.target_val is not None else [])]
    problems = []
    if is_main():
        for kind in kinds:
            spec: DatasetSpec = getattr(cfg.data, kind)
            report = check_dataset(
                spec.name,
                spec.root,
                spec.split,
                num_classes=cfg.model.num_classes,
                labelled=spec.labelled,
                progress=False,
            )
            if not report.usable:
                problems.append(
                    f"data.{kind} ({spec.name} at {spec.root}, split {spec.split}) is not usable:\n{report.format()}"
                )
    problems = broadcast_object(problems)
    if problems:
        raise ValueError(
            "\n".join(problems) + "\nfix the dataset or the config; `crossregion data check` shows details"
        )


def seed_everything(cfg: ExperimentConfig) -> None:
    """Seed python, numpy and torch with ``seed + rank``; deterministic kernels if asked."""
    seed = cfg.engine.seed + get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if cfg.engine.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


# The segmenter's backbone parameters (what ``model.init_backbone_only`` loads).
BACKBONE_PREFIX = "feature_extractor."
# The auxiliary (layer3) head of a multi-level segmenter.
AUX_PREFIX = "aux_classifier."


def build_model(model: ModelConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The segmenter and its ``build_segmenter`` arguments; loads ``model.init_checkpoint`` if set."""
    from crossregion.models import build_segmenter, load_segmenter

    model_args = {
        "backbone": model.backbone,
        "num_classes": model.num_classes,
        "pretrained": model.pretrained,
        "freeze_bn": model.freeze_bn,
        "multi_level": model.multi_level,
        "head": model.head,
        "input_norm": model.input_norm,
    }
    segmenter = build_segmenter(**model_args)
    if model.init_checkpoint is not None:
        # load_segmenter names the file and the expected vs found class count on a mismatch.
        if model.init_backbone_only:
            # The file's own head (any) is read and dropped; only the backbone must fit.
            loaded, info = load_segmenter(model.init_checkpoint, backbone=model.backbone, num_classes=model.num_classes)
            backbone_state = {
                key: value for key, value in loaded.state_dict().items() if key.startswith(BACKBONE_PREFIX)
            }
            missing, unexpected = segmenter.load_state_dict(backbone_state, strict=False)
            missing = [key for key in missing if key.startswith(BACKBONE_PREFIX)]
        else:
            loaded, info = load_segmenter(
                model.init_checkpoint, backbone=model.backbone, num_classes=model.num_classes, head=model.head
            )
            if info["input_norm"] != model.input_norm:
                # The whole model continues from the file: fed other input it would start from
                # wrong predictions (a backbone alone is re-trained with a new head, so it may).
                raise ValueError(
                    f"model.init_checkpoint {model.init_checkpoint} expects {info['input_norm']}-normalised "
                    f"input but model.input_norm is {model.input_norm}; set model.input_norm={info['input_norm']}"
                )
            state = loaded.state_dict()
            if not model.multi_level and any(key.startswith(AUX_PREFIX) for key in state):
                # A multi-level CDA model (AdaptSegNet, ADVENT) starts a single-level one (CRA) with
                # its backbone and main head; the auxiliary layer3 head has no place in it.
                state = {key: value for key, value in state.items() if not key.startswith(AUX_PREFIX)}
                logger.info("model.init_checkpoint is multi-level: its auxiliary head is left out")
            missing, unexpected = segmenter.load_state_dict(state, strict=False)
        # FrozenBatchNorm has no step counter: starting trainable BN from it leaves only that
        # missing, starting FrozenBatchNorm from trainable BN (ProDA's frozen-BN warm-up) only that left over.
        missing = [key for key in missing if not key.endswith("num_batches_tracked")]
        unexpected = [key for key in unexpected if not key.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(
                f"model.init_checkpoint {model.init_checkpoint} does not fit model {model_args}: "
                f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]} (multi_level differs?)"
            )
        logger.info(
            "initialised %s from %s (%s format)",
            "the backbone" if model.init_backbone_only else "the model",
            model.init_checkpoint,
            info["format"],
        )
    return segmenter, {**model_args, "pretrained": None}


def build_train_datasets(cfg: ExperimentConfig, method: Method) -> dict[str, Dataset]:
    """One training dataset per batch the method draws; target images carry the method's pseudo
    labels (joined with the store, augmented jointly with the image) when it trains on a store.
    With ``method.needs_unaugmented_target`` also data.target under ``UNAUGMENTED_TARGET``: the
    same images, resized as for evaluation, without flip, crop or jitter.
    """
    from crossregion.data.datasets import build_dataset
    from crossregion.data.pseudo_labelled import PseudoLabelledDataset
    from crossregion.data.transforms import eval_transform

    datasets: dict[str, Dataset] = {}
    for kind in method.required_batches:
        spec: DatasetSpec = getattr(cfg.data, kind)
        if kind == "target" and method.pseudo_label_store is not None:
            images = build_dataset(spec.name, spec.root, spec.split, num_classes=cfg.model.num_classes, labelled=False)
            transform = train_transform(spec, input_norm=cfg.model.input_norm)
            datasets[kind] = PseudoLabelledDataset(images, method.pseudo_label_store, transform)
        else:
            datasets[kind] = build_train_dataset(spec, cfg.model.num_classes, cfg.model.input_norm)
    if method.needs_unaugmented_target:
        spec = cfg.data.target
        datasets[UNAUGMENTED_TARGET] = build_dataset(
            spec.name,
            spec.root,
            spec.split,
            num_classes=cfg.model.num_classes,
            transform=eval_transform(size=spec.resize, input_norm=cfg.model.input_norm),
            labelled=False,
        )
    return datasets


def build_train_dataset(spec: DatasetSpec, num_classes: int, input_norm: str) -> Dataset:
    """A training dataset with ``spec``'s transforms, in the official CRA order (docs/spec.md §1.7),
    normalised for a model whose ``input_norm`` is given."""
    from crossregion.data.datasets import build_dataset

    return build_dataset(
        spec.name,
        spec.root,
        spec.split,
        num_classes=num_classes,
        transform=train_transform(spec, input_norm=input_norm),
        labelled=spec.labelled,
    )


def build_evaluator(cfg: ExperimentConfig, device: torch.device) -> Callable[[nn.Module], dict[str, Any]] | None:
    """Segmenter -> target-val metrics, for the periodic evaluation; None without ``data.target_val``."""
    spec = cfg.data.target_val
    if spec is None or cfg.engine.eval_period == 0:
        return None
    from crossregion.data.datasets import build_dataset
    from crossregion.eval.evaluate import evaluate_segmenter

    dataset = build_dataset(spec.name, spec.root, spec.split, num_classes=cfg.model.num_classes, labelled=True)
    return lambda segmenter: evaluate_segmenter(
        segmenter, dataset, input_size=spec.resize, device=device, progress=False
    )


def run_training(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    method: Method,
    segmenter: nn.Module,
    model_args: Mapping[str, Any],
    datasets: Mapping[str, Dataset],
    device: torch.device,
    resume: bool,
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None,
) -> Path:
    """Train built objects: prepares the run folder, wraps for DDP, resumes, runs the ``Trainer``.

    Returns:
        ``run_dir/final.pth``.
    """
    run_dir = Path(run_dir)
    cfg = with_resolved_precision(cfg, device)
    # One writer per run folder (rank 0 writes for all ranks).
    with exclusive_writer(run_dir) if is_main() else contextlib.nullcontext():
        state = _prepare_run_dir(cfg, run_dir, resume)
        world_size = get_world_size()
        if cfg.data.batch_size % world_size:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} must be divisible by the {world_size} processes")

        models = method.build_models(segmenter)
        for name, model in models.items():
            model.to(device)
            if cfg.engine.channels_last:
                model.to(memory_format=torch.channels_last)
            if cfg.engine.sync_bn and world_size > 1:
                models[name] = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        optimizers = method.build_optimizers(models, cfg.optim)
        wrapped = {name: wrap_ddp(model, device) for name, model in models.items()}
        loaders = {
            kind: InfiniteLoader(
                datasets[kind],
                batch_size=cfg.data.batch_size // world_size,
                num_workers=cfg.data.num_workers,
                seed=cfg.engine.seed,
                name=kind,
                sampler=build_class_balanced_sampler(cfg, kind, datasets[kind], run_dir)
                if getattr(cfg.data, kind).class_balanced
                else None,
            )
            for kind in method.required_batches
        }
        trainer = Trainer(
            cfg=cfg,
            method=method,
            models=wrapped,
            optimizers=optimizers,
            loaders=loaders,
            start_datasets={name: dataset for name, dataset in datasets.items() if name not in loaders},
            device=device,
            run_dir=run_dir,
            model_args=model_args,
            evaluate=evaluate,
        )
        if state is not None:
            trainer.load_state_dict(state)
            logger.info("resumed at iteration %d", trainer.iteration)
        trainer.train()
    return run_dir / ckpt.FINAL_NAME


def build_class_balanced_sampler(
    cfg: ExperimentConfig,
    kind: str,
    dataset: Dataset,
    run_dir: Path,
) -> ResumableClassBalancedSampler:
    """The class-balanced sampler of ``data.<kind>`` (docs/spec.md §2.5).

    One epoch is ``optim.max_iters`` global batches, as the official draw list (N = MAX_ITER x
    BATCH_SIZE) covers the whole poly horizon. Which classes each image holds is read from its
    labels once by rank 0 and cached in ``RUN_DIR/class_presence_<kind>.json``, so a resumed run
    reads no label again. The run folder, not the data folder: it is always writable, while
    dataset roots are often read-only or shared between users (the cost: each new run reads
    the labels once).
    """
    from crossregion.data.sampler import compute_class_presence

    cache = run_dir / f"class_presence_{kind}.json"
    presence = compute_class_presence(dataset, cache) if is_main() else None
    return ResumableClassBalancedSampler(
        broadcast_object(presence),
        samples_per_epoch=cfg.optim.max_iters * cfg.data.batch_size,
        seed=cfg.engine.seed,
    )


def _newest_checkpoint(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint a resume continues from and its state: ``last.pth``, or when it is gone
    the newest ``model_iter*.pth`` that loads (a damaged one is skipped with a warning)."""
    last = run_dir / ckpt.LAST_NAME
    if last.exists():
        return last, ckpt.load_checkpoint(last)
    periodic = ckpt.periodic_checkpoints(run_dir)
    for checkpoint in reversed(periodic):
        try:
            state = ckpt.load_checkpoint(checkpoint)
        except ValueError as error:
            logger.warning("skipping %s: %s", checkpoint, error)
            continue
        logger.warning("%s is missing: resuming from %s, the newest checkpoint of the run", last, checkpoint)
        return checkpoint, state
    if periodic:
        raise ValueError(
            f"cannot resume {run_dir}: {last} is missing and none of {', '.join(map(str, periodic))} can be "
            "read; start a new --output"
        )
    return None, None


def _prepare_run_dir(cfg: ExperimentConfig, run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """Create the folder, write ``config.yaml``; with ``resume`` return the last checkpoint (or None).

    A resume also removes what a killed run left behind: checkpoint temp files, and the
    ``metrics.jsonl`` rows after the checkpoint's iteration (they are written again).
    """
    last = run_dir / ckpt.LAST_NAME
    if not resume and (last.exists() or ckpt.periodic_checkpoints(run_dir)):
        held = last if last.exists() else ckpt.periodic_checkpoints(run_dir)[-1]
        raise ValueError(
            f"{run_dir} already holds a run ({held}); pass --resume to continue it or choose another --output"
        )
    state = None
    if resume:
        checkpoint, state = _newest_checkpoint(run_dir)
        if state is None:
            logger.info("no checkpoint in %s yet: starting from iteration 0", run_dir)
        else:
            differences = config_differences(state["config"], config_to_dict(cfg))
            if differences:
                raise ValueError(
                    f"cannot resume {checkpoint}: it was trained with another config; differences "
                    "(checkpoint -> now):\n  "
                    + "\n  ".join(differences)
                    + "\nrun with the original config (see its config.yaml) or start a new --output"
                )
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            for stale in remove_stale_temp_files(run_dir):
                logger.info("removed %s, left by an interrupted checkpoint write", stale)
            truncate_metrics(run_dir, 0 if state is None else int(state["iteration"]))
        save_config(cfg, run_dir / "config.yaml", ckpt.code_version())
    barrier()
    return state
