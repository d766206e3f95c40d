"""``crossregion select``: rank checkpoints by label-free criteria on unlabelled target images.

Candidates are checkpoint files, run folders (every ``model_iter*.pth`` they keep) or pipeline
folders (every checkpoint of every stage). Each candidate is scored by the criteria of
``crossregion.eval.selection`` on the same sampled pixels of the same target images; the command
prints one ranked table per criterion and writes every score, ranking and timing to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from crossregion.app.arguments import add_dataset_arguments, add_width_height_argument, height_width
from crossregion.data.datasets import DATASETS, build_dataset
from crossregion.data.transforms import WithOriginalSize, eval_transform
from crossregion.engine.checkpoint import periodic_checkpoints
from crossregion.eval.selection import (
    CRITERIA,
    TARGET_CRITERIA,
    TrustRule,
    check_criteria,
    score_segmenter,
)
from crossregion.files import check_output_file, write_text_atomically
from crossregion.trust import OFFICIAL_RARE_FACTOR, OFFICIAL_RARE_SHARE, OFFICIAL_THRESHOLD

logger = logging.getLogger(__name__)

# A pipeline keeps a replaced stage here (app/pipeline/cache.py); its checkpoints are not candidates.
_REPLACED_STAGE_SUFFIX = ".previous"
OFFICIAL_RULE = TrustRule(OFFICIAL_THRESHOLD, OFFICIAL_RARE_SHARE, OFFICIAL_RARE_FACTOR)


@dataclass(frozen=True)
class ImageSet:
    """Images to score on: a dataset split, a resize for the model, and how many (evenly spaced)."""

    dataset: str
    root: str
    split: str
    input_size: tuple[int, int] | None = None  # (height, width); None = as stored
    images: int = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "candidates",
        nargs="+",
        type=Path,
        metavar="CANDIDATE",
        help="checkpoint files, run folders (every model_iter*.pth) or pipeline folders (every stage's)",
    )
    add_dataset_arguments(
        parser,
        split_default="train",
        root_help="target dataset root (its labels are not read)",
        split_help="target split name or list file (default train)",
    )
    parser.add_argument("--output", type=Path, required=True, help="the JSON file of scores and rankings")
    parser.add_argument(
        "--criteria",
        nargs="+",
        choices=tuple(CRITERIA),
        help=f"default: {' '.join(TARGET_CRITERIA)}, and dev when --source-dataset is given",
    )
    add_width_height_argument(parser, "--input-size", "resize target images to W×H for the model")
    parser.add_argument("--images", type=int, default=100, help="target images scored, evenly spaced (default 100)")
    parser.add_argument("--pixels", type=int, default=512, help="pixels drawn per target image (default 512)")
    parser.add_argument(
        "--store",
        type=Path,
        help="pseudo-label store whose trust rule (λ, rare classes) the trusted criterion uses "
        "(default: the official λ=0.01, share 1%%, factor 0.5)",
    )
    parser.add_argument("--source-dataset", choices=DATASETS.names(), help="labelled source images for dev")
    parser.add_argument("--source-root", type=Path, help="source dataset root (with labels)")
    parser.add_argument(
        "--source-split",
        default="train",
        help="source split or list file (default train); hold images out of training where you can",
    )
    parser.add_argument("--source-images", type=int, default=100, help="source images for dev (default 100)")
    add_width_height_argument(parser, "--source-input-size", "resize source images to W×H")
    parser.add_argument("--seed", type=int, default=0, help="fixes the sampled pixels (default 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if present")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (default 2)")


def main(args: argparse.Namespace) -> int:
    check_output_file(args.output)
    source = None
    if args.source_dataset is not None or args.source_root is not None:
        if args.source_dataset is None or args.source_root is None:
            raise ValueError("dev's source images need both --source-dataset and --source-root")
        source = ImageSet(
            args.source_dataset,
            str(args.source_root),
            args.source_split,
            height_width(args.source_input_size, "--source-input-size"),
            _positive(args.source_images, "--source-images"),
        )
    criteria = args.criteria or [*TARGET_CRITERIA, *(["dev"] if source is not None else [])]
    target = ImageSet(
        args.dataset,
        str(args.root),
        args.split,
        height_width(args.input_size, "--input-size"),
        _positive(args.images, "--images"),
    )
    report = rank_checkpoints(
        candidate_checkpoints(args.candidates),
        criteria,
        target=target,
        source=source,
        rule=store_rule(args.store) if args.store is not None else OFFICIAL_RULE,
        pixels_per_image=_positive(args.pixels, "--pixels"),
        device=args.device,
        workers=args.workers,
        seed=args.seed,
    )
    write_text_atomically(args.output, json.dumps(report, indent=2) + "\n")
    print(ranking_tables(report))
    print(f"wrote {args.output}")
    return 0


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise ValueError(f"{option} must be at least 1, got {value}")
    return value


def candidate_checkpoints(paths: list[Path]) -> list[Path]:
    """The checkpoint files that ``paths`` name, in order, each once.

    A file is a candidate; a folder contributes its ``model_iter*.pth`` (a run folder) or, when it
    has none, those of its sub-folders (a pipeline folder; replaced ``*.previous`` stages left out).

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a folder holds no checkpoint.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            checkpoints = periodic_checkpoints(path)
            if not checkpoints:
                stages = [sub for sub in sorted(path.iterdir()) if sub.is_dir()]
                for stage in stages:
                    if not stage.name.endswith(_REPLACED_STAGE_SUFFIX):
                        checkpoints += periodic_checkpoints(stage)
            if not checkpoints:
                raise ValueError(
                    f"{path} holds no checkpoint: no model_iter*.pth in it (a run folder) or in its sub-folders "
                    "(a pipeline folder); name checkpoint files or a folder of a finished run"
                )
            found += checkpoints
        else:
            raise FileNotFoundError(f"candidate {path} does not exist")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def store_rule(store: Path) -> TrustRule:
    """The trust rule a pseudo-label store was made with."""
    from crossregion.data.pseudo_labels import PseudoLabelStore

    manifest = PseudoLabelStore(store).manifest
    return TrustRule(float(manifest["threshold"]), float(manifest["rare_share"]), float(manifest["rare_factor"]))


def _loader(
    images: ImageSet, num_classes: int, *, labelled: bool, workers: int, input_norm: str
) -> torch.utils.data.DataLoader:
    dataset = build_dataset(images.dataset, images.root, images.split, num_classes=num_classes, labelled=labelled)
    dataset.transform = WithOriginalSize(eval_transform(size=images.input_size, input_norm=input_norm))
    count = min(images.images, len(dataset))
    chosen = torch.linspace(0, len(dataset) - 1, count).round().long().unique().tolist()
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, chosen), batch_size=1, num_workers=workers)


def rank_checkpoints(
    checkpoints: list[Path],
    criteria: list[str],
    *,
    target: ImageSet,
    source: ImageSet | None = None,
    rule: TrustRule = OFFICIAL_RULE,
    pixels_per_image: int = 512,
    device: str = "auto",
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every checkpoint by every criterion; the report ``crossregion select`` writes.

    Every checkpoint is read once before any scoring, so a missing file, a file that is no
    segmenter checkpoint, or a model with another class count than the first fails at once.

    Returns:
        ``settings``, ``criteria`` (name -> title, direction), ``candidates`` (path, iteration,
        scores, seconds per criterion, each candidate's load time) and ``rankings`` (name -> paths,
        best first).
    """
    from crossregion.dist import select_device
    from crossregion.models.checkpoint_io import load_segmenter

    check_criteria(criteria)
    if any(CRITERIA[name].needs_source for name in criteria) and source is None:
        raise ValueError("the dev criterion needs labelled source images: give --source-dataset and --source-root")
    if not checkpoints:
        raise ValueError("no candidate checkpoints to rank")
    num_classes = _check_candidates(checkpoints)
    torch_device = select_device(device)
    with_source = source is not None and any(CRITERIA[name].needs_source for name in criteria)
    rows = []
    for path in tqdm(checkpoints, desc="select", unit="ckpt", disable=not progress):
        segmenter, info = load_segmenter(path, num_classes=num_classes, device=torch_device)
        # Each candidate sees the images scaled as its own model expects (model.input_norm).
        target_loader = _loader(target, num_classes, labelled=False, workers=workers, input_norm=segmenter.input_norm)
        source_loader = (
            _loader(source, num_classes, labelled=True, workers=workers, input_norm=segmenter.input_norm)
            if with_source
            else None
        )
        scores, seconds = score_segmenter(
            segmenter,
            criteria,
            target=target_loader,
            source=source_loader,
            rule=rule,
            device=torch_device,
            pixels_per_image=pixels_per_image,
            seed=seed,
        )
        logger.debug(
            "%s: %s", path, ", ".join(f"{name} {scores[name]:.4f} ({seconds[name]:.1f} s)" for name in criteria)
        )
        rows.append({"path": str(path), "iteration": info["iteration"], "scores": scores, "seconds": seconds})
    rankings = {
        name: [
            row["path"]
            for row in sorted(rows, key=lambda row: row["scores"][name], reverse=CRITERIA[name].higher_is_better)
        ]
        for name in criteria
    }
    return {
        "settings": {
            "target": {**asdict(target), "images": len(target_loader)},
            "source": None if source_loader is None else {**asdict(source), "images": len(source_loader)},
            "trust_rule": asdict(rule),
            "pixels_per_image": pixels_per_image,
            "seed": seed,
            "num_classes": num_classes,
        },
        "criteria": {
            name: {"title": CRITERIA[name].title, "higher_is_better": CRITERIA[name].higher_is_better}
            for name in criteria
        },
        "candidates": rows,
        "rankings": rankings,
    }


def _check_candidates(checkpoints: list[Path]) -> int:
    """The class count all checkpoints share; an error naming the first one that differs."""
    from crossregion.models.checkpoint_io import load_segmenter

    first = None
    for path in checkpoints:
        _, info = load_segmenter(path)
        if first is None:
            first = (path, info["num_classes"])
        elif info["num_classes"] != first[1]:
            raise ValueError(
                f"{path} predicts {info['num_classes']} classes but {first[0]} predicts {first[1]}: "
                "candidates must be models of the same task; leave out the other model"
            )
    return first[1]


def ranking_tables(report: dict[str, Any]) -> str:
    """One ranked Markdown table per criterion, best first, with the seconds each candidate took."""
    by_path = {row["path"]: row for row in report["candidates"]}
    blocks = []
    for name, criterion in report["criteria"].items():
        direction = "higher is better" if criterion["higher_is_better"] else "lower is better"
        lines = [
            f"{name}: {criterion['title']} ({direction})",
            "",
            "| rank | candidate | iteration | score | seconds |",
            "|---|---|---|---|---|",
        ]
        for rank, path in enumerate(report["rankings"][name], start=1):
            row = by_path[path]
            lines.append(
                f"| {rank} | {path} | {row['iteration']} | {row['scores'][name]:.4f} | {row['seconds'][name]:.1f} |"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
