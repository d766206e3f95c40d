"""``crossregion pseudo-label``: pseudo labels and normalised entropy of a CDA model on target train.

Stage 2 of the pipeline (docs/spec.md §1.2): the model runs on each image (resized to
``--input-size``), its logits are upsampled bilinearly (align_corners=True) to the original
image size and softmaxed there; the argmax is the pseudo label and e = H / (K ln K) the
entropy. Both go into a pseudo-label store (``crossregion.data.pseudo_labels``); rerunning the
same command after an interruption continues with the images not stored yet.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from crossregion.app.arguments import add_dataset_arguments, add_width_height_argument, height_width
from crossregion.data.datasets import build_dataset
from crossregion.data.pseudo_labels import PseudoLabelWriter
from crossregion.data.transforms import WithOriginalSize, eval_transform
from crossregion.eval.inference import inference_batches, predict_probs
from crossregion.files import check_output_folder, check_output_outside, loader_workers
from crossregion.trust import (
    OFFICIAL_RARE_FACTOR,
    OFFICIAL_RARE_SHARE,
    OFFICIAL_THRESHOLD,
    normalized_entropy,
)

logger = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (a ResNet-101 checkpoint is ~350 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="the CDA model (crossregion or official FADA/CRA checkpoint)"
    )
    add_dataset_arguments(parser, split_default="train", root_help="target dataset root folder")
    parser.add_argument("--output", type=Path, required=True, help="the pseudo-label store folder")
    add_width_height_argument(
        parser,
        "--input-size",
        "resize each image to W×H before inference (official: 1024 512); default: the image size",
    )
    parser.add_argument(
        "--flip", action="store_true", help="average with the horizontally flipped image (not official)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=OFFICIAL_THRESHOLD,
        help="λ for the trusted fractions of stats.json (default 0.01)",
    )
    parser.add_argument(
        "--rare-share",
        type=float,
        default=OFFICIAL_RARE_SHARE,
        help="a class below this share of pixels is rare (default 0.01)",
    )
    parser.add_argument(
        "--rare-factor", type=float, default=OFFICIAL_RARE_FACTOR, help="entropy factor of rare classes (default 0.5)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if present")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (default 2)")


def main(args: argparse.Namespace) -> int:
    check_output_folder(args.output)
    check_output_outside(
        args.output, args.root, "--output", "--root", "the store would be written into the dataset (often shared)"
    )
    stats = write_pseudo_labels(
        args.checkpoint,
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        output=args.output,
        input_size=height_width(args.input_size, "--input-size"),
        flip=args.flip,
        threshold=args.threshold,
        rare_share=args.rare_share,
        rare_factor=args.rare_factor,
        device=args.device,
        workers=args.workers,
    )
    print(
        f"pseudo labels of {stats['num_images']} images in {args.output}: trusted {stats['trusted_fraction']:.1%} "
        f"at λ={args.threshold}, rare classes {stats['rare_class_names'] or 'none'}"
    )
    return 0


def write_pseudo_labels(
    checkpoint: str | Path,
    *,
    dataset: str,
    root: str | Path,
    split: str,
    output: str | Path,
    input_size: tuple[int, int] | None,
    flip: bool = False,
    threshold: float = OFFICIAL_THRESHOLD,
    rare_share: float = OFFICIAL_RARE_SHARE,
    rare_factor: float = OFFICIAL_RARE_FACTOR,
    device: str = "auto",
    workers: int = 0,
) -> dict:
    """Write (or finish) the pseudo-label store of ``checkpoint`` on a target split; returns its stats.

    Args:
        checkpoint: the CDA model (crossregion or official format).
        dataset, root, split: the target images.
        output: the store folder; a partial store of the same settings is continued.
        input_size: (height, width) the images are resized to for the model; None = as stored.
        flip: average with the flipped image (not official).
        threshold, rare_share, rare_factor: the trust rule the store records (λ, rare classes);
            methods that train on the store take it from there.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: image-decoding worker processes.
    """
    from crossregion.dist import select_device
    from crossregion.models.checkpoint_io import load_segmenter

    checkpoint, output = Path(checkpoint), Path(output)
    torch_device = select_device(device)
    segmenter, info = load_segmenter(checkpoint, device=torch_device)
    num_classes = info["num_classes"]
    images = build_dataset(dataset, root, split, num_classes=num_classes, labelled=False)
    writer = PseudoLabelWriter(
        output,
        {
            "num_classes": num_classes,
            "class_names": list(images.class_names),
            "palette": [list(colour) for colour in images.label_set.palette],
            "dataset": dataset,
            "split": split,
            "root": str(Path(root).resolve()),
            "names": list(images.names),
            "checkpoint": {"path": str(checkpoint.resolve()), "sha256": file_sha256(checkpoint)},
            # Recorded as W×H, the command line's order.
            "input_size": None if input_size is None else [input_size[1], input_size[0]],
            "flip": flip,
            "threshold": threshold,
            "rare_share": rare_share,
            "rare_factor": rare_factor,
        },
    )
    pending = set(writer.pending_names())
    indices = [index for index, name in enumerate(images.names) if name in pending]
    logger.info(
        "pseudo-labelling %s %s with %s (%d classes): %d of %d images to do",
        dataset,
        split,
        checkpoint,
        num_classes,
        len(indices),
        len(images),
    )
    images.transform = WithOriginalSize(eval_transform(size=input_size, input_norm=segmenter.input_norm))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(images, indices), batch_size=None, num_workers=loader_workers(workers)
    )
    segmenter.eval()
    progress = tqdm(desc="pseudo-label", unit="img", total=len(images), initial=len(images) - len(indices))
    for batch in inference_batches(loader):
        inputs = torch.stack([sample["image"] for sample in batch]).to(torch_device, non_blocking=True)
        output_size = tuple(int(size) for size in batch[0]["original_size"])
        probs = predict_probs(segmenter, inputs, output_size=output_size, flip=flip)
        pseudo_labels = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
        entropies = normalized_entropy(probs).float().cpu().numpy()
        for sample, pseudo_label, entropy in zip(batch, pseudo_labels, entropies):
            writer.write(sample["name"], pseudo_label, entropy)
        progress.update(len(batch))
    progress.close()
    return writer.finish()
