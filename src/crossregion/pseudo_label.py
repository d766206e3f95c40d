"""``crossregion pseudo-label``: pseudo labels and normalised entropy of a CDA model on target train.

Stage 2 of the pipeline (cra-spec §1.2): the model runs on each image (resized to
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

from crossregion.data.datasets import DATASETS, build_dataset
from crossregion.data.pseudo_labels import PseudoLabelWriter
from crossregion.data.transforms import eval_transform
from crossregion.eval.inference import predict_probs
from crossregion.files import check_output_folder
from crossregion.methods.cra_losses import normalized_entropy

logger = logging.getLogger(__name__)

# Official CRA values (cra-spec §1.4): λ, the rare-class share and the rare-class factor.
DEFAULT_THRESHOLD = 0.01
DEFAULT_RARE_SHARE = 0.01
DEFAULT_RARE_FACTOR = 0.5


class _WithOriginalSize:
    """Runs a transform and records the image's size before it, the size the maps are stored at."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, sample: dict) -> dict:
        height, width = sample["image"].shape[-2:]
        sample = self.transform(sample)
        sample["original_size"] = torch.tensor([height, width])
        return sample


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (a ResNet-101 checkpoint is ~350 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="the CDA model (crossregion or official FADA/CRA checkpoint)")
    parser.add_argument("--dataset", required=True, choices=DATASETS.names(), help="dataset layout of --root")
    parser.add_argument("--root", type=Path, required=True, help="target dataset root folder")
    parser.add_argument("--split", default="train", help="split name or list file (default train)")
    parser.add_argument("--output", type=Path, required=True, help="the pseudo-label store folder")
    parser.add_argument(
        "--input-size", nargs=2, type=int, metavar=("W", "H"),
        help="resize each image to W×H before inference (official: 1024 512); default: the image size",
    )
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image (not official)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="λ for the trusted fractions of stats.json (default 0.01)")
    parser.add_argument("--rare-share", type=float, default=DEFAULT_RARE_SHARE, help="a class below this share of pixels is rare (default 0.01)")
    parser.add_argument("--rare-factor", type=float, default=DEFAULT_RARE_FACTOR, help="entropy factor of rare classes (default 0.5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if present")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (default 2)")


def main(args: argparse.Namespace) -> int:
    from crossregion.engine.dist import select_device
    from crossregion.models.checkpoint_io import load_segmenter

    check_output_folder(args.output)
    device = select_device(args.device)
    segmenter, info = load_segmenter(args.checkpoint, device=device)
    num_classes = info["num_classes"]
    dataset = build_dataset(args.dataset, args.root, args.split, num_classes=num_classes, labelled=False)
    input_size = None
    if args.input_size is not None:
        width, height = args.input_size
        if width < 1 or height < 1:
            raise ValueError(f"--input-size must be positive, got {width} {height}")
        input_size = (height, width)
    writer = PseudoLabelWriter(
        args.output,
        {
            "num_classes": num_classes,
            "class_names": list(dataset.class_names),
            "palette": [list(colour) for colour in dataset.label_set.palette],
            "dataset": args.dataset,
            "split": args.split,
            "root": str(Path(args.root).resolve()),
            "names": list(dataset.names),
            "checkpoint": {"path": str(Path(args.checkpoint).resolve()), "sha256": file_sha256(args.checkpoint)},
            "input_size": None if input_size is None else list(args.input_size),
            "flip": args.flip,
            "threshold": args.threshold,
            "rare_share": args.rare_share,
            "rare_factor": args.rare_factor,
        },
    )
    pending = set(writer.pending_names())
    indices = [index for index, name in enumerate(dataset.names) if name in pending]
    logger.info(
        "pseudo-labelling %s %s with %s (%d classes): %d of %d images to do",
        args.dataset, args.split, args.checkpoint, num_classes, len(indices), len(dataset),
    )
    dataset.transform = _WithOriginalSize(eval_transform(size=input_size))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=1, num_workers=args.workers)
    segmenter.eval()
    progress = tqdm(loader, desc="pseudo-label", unit="img", total=len(dataset), initial=len(dataset) - len(indices))
    for sample in progress:
        images = sample["image"].to(device, non_blocking=True)
        output_size = tuple(int(size) for size in sample["original_size"][0])
        probs = predict_probs(segmenter, images, output_size=output_size, flip=args.flip)
        pseudo_label = probs.argmax(dim=1)[0].to(torch.uint8)
        entropy = normalized_entropy(probs)[0]
        writer.write(sample["name"][0], pseudo_label.cpu().numpy(), entropy.float().cpu().numpy())
    stats = writer.finish()
    print(
        f"pseudo labels of {stats['num_images']} images in {args.output}: trusted {stats['trusted_fraction']:.1%} "
        f"at λ={args.threshold}, rare classes {stats['rare_class_names'] or 'none'}"
    )
    return 0
