"""How strongly CRA's region terms pull on the segmenter at the paper's scale.

One CRA step at the paper's scale — DeepLabv2-R101 (OS 8, 2048 feature channels), one 512×1024
crop, a fresh fine-grained discriminator, the official constants (λ 0.01, T 1.8, clip 0.9,
weight 0.001) — and the ratio of gradient norms over the segmenter's parameters:

    ‖∇ 0.001 · L_adv‖ / ‖∇ L_trusted CE‖    (CRA)
    ‖∇ 0.001 · L_ent‖ / ‖∇ L_trusted CE‖    (the entropy-minimisation baseline)

computed by the same functions the methods use. No ImageNet or Cityscapes weights may be
downloaded, so the weights are "trained-looking" by a quick fit: the R101 is trained from scratch
with Adam on random 128×256 crops of one benchmark target-val image and its label, upscaled to
512×1024, until 30% of the full image is confident enough to be trusted; its own prediction on
the full crop (BatchNorm on the crop's statistics, as in the step) is the pseudo label (no
rare-class scaling). The benchmark's own ratio is logged by every self-training run
(``method.diagnostics_period``; bench/cra_diagnosis.py tabulates it).

    python bench/alignment_scale.py                  # ~5 min and ~12 GB on 2 CPU cores
    python bench/alignment_scale.py --quick          # smoke: ResNet-18 half width, 64x128

Last line: ``alignment_scale ratio cra ... entropy_min ...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cpu_description

from crossregion.data.datasets import build_dataset
from crossregion.data.transforms import eval_transform
from crossregion.methods.cra_losses import domain_targets, soft_domain_labels, soft_label_cross_entropy
from crossregion.methods.entropy_min import masked_entropy_loss
from crossregion.methods.losses import SOURCE_DOMAIN, resize_aligned
from crossregion.methods.self_training import gradient_norm_ratio, trusted_cross_entropy
from crossregion.models import FineGrainedDiscriminator
from crossregion.models.deeplabv2 import build_segmenter
from crossregion.synth.benchmark import generate_benchmark
from crossregion.trust import normalized_entropy, region_masks

THRESHOLD, SEG_TEMPERATURE, SOFT_TEMPERATURE, CLIP, WEIGHT = 0.01, 1.8, 1.8, 0.9, 0.001


def benchmark_image(workdir: Path, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One target-val image of a small generated benchmark and its train-ID label, resized to
    ``size`` (the image bilinearly and normalised as for training, the label nearest)."""
    root = workdir / "synth"
    if not root.exists():
        generate_benchmark(
            root, source_images=2, target_train_images=2, target_val_images=1, height=80, width=160, seed=0
        )
    dataset = build_dataset("cityscapes", root / "cityscapes", "val", num_classes=19, labelled=True)
    sample = eval_transform(size=size, resize_mask=True, input_norm="imagenet")(dict(dataset[0]))
    return sample["image"], sample["mask"].long()


def fit(model: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, crop: tuple[int, int], max_steps: int) -> int:
    """A quick supervised fit on random crops of one image (Adam 1e-3), until 30% of the full
    image is trusted (checked every 20 steps) or ``max_steps``; returns the steps taken."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    steps = 0
    for steps in range(1, max_steps + 1):
        top = int(torch.randint(0, image.shape[1] - crop[0] + 1, (1,), generator=generator))
        left = int(torch.randint(0, image.shape[2] - crop[1] + 1, (1,), generator=generator))
        batch = image[None, :, top : top + crop[0], left : left + crop[1]]
        labels = label[None, top : top + crop[0], left : left + crop[1]]
        logits = resize_aligned(model(batch)["logits"], crop)
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if steps % 20 == 0 and trusted_share(model, image) >= 0.3:
            break
    return steps


@torch.no_grad()
def train_mode_probs(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Softmax of the full crop with BatchNorm on the crop's own statistics, as in the measured
    step: after a short fit the running statistics are still near their initial values, so an
    eval-mode pass would label a different model."""
    return F.softmax(resize_aligned(model(image[None])["logits"], tuple(image.shape[-2:])), dim=1)


def trusted_share(model: torch.nn.Module, image: torch.Tensor) -> float:
    trusted, _ = region_masks(normalized_entropy(train_mode_probs(model, image)), THRESHOLD)
    return float(trusted.float().mean())


def measure(model: torch.nn.Module, image: torch.Tensor, num_classes: int) -> dict[str, float]:
    """One CRA step's gradient-norm ratios (and the entropy baseline's) at the current weights."""
    crop = tuple(image.shape[-2:])
    probs = train_mode_probs(model, image)
    pseudo_label = probs.argmax(dim=1)
    trusted, untrusted = region_masks(normalized_entropy(probs), THRESHOLD)
    discriminator = FineGrainedDiscriminator(model.feature_channels, num_classes)
    for parameter in discriminator.parameters():
        parameter.requires_grad_(False)
    outputs = model(image[None])
    logits = resize_aligned(outputs["logits"], crop)
    loss_seg = trusted_cross_entropy(logits, pseudo_label, trusted, SEG_TEMPERATURE, "per_image")
    soft_labels = soft_domain_labels(logits, SOFT_TEMPERATURE, CLIP)
    disc_logits = resize_aligned(discriminator(outputs["features"]), crop)
    loss_adv = soft_label_cross_entropy(disc_logits, domain_targets(soft_labels, SOURCE_DOMAIN), untrusted)
    loss_ent = masked_entropy_loss(logits, untrusted)
    return {
        "trusted_fraction": float(trusted.float().mean()),
        "loss_seg": float(loss_seg.detach()),
        "loss_adv": float(loss_adv.detach()),
        "ratio_cra": float(gradient_norm_ratio(WEIGHT * loss_adv, loss_seg, model)),
        "ratio_entropy_min": float(gradient_norm_ratio(WEIGHT * loss_ent, loss_seg, model)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke: ResNet-18 half width at 64x128")
    parser.add_argument("--workdir", type=Path, default=Path("runs/alignment_scale"))
    parser.add_argument("--max-fit-steps", type=int, default=160)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone, size, crop = (
        ("resnet18_half", (64, 128), (32, 64)) if args.quick else ("resnet101", (512, 1024), (128, 256))
    )
    num_classes = 19
    image, label = benchmark_image(args.workdir, size)
    model = build_segmenter(backbone, num_classes)
    start = time.perf_counter()
    steps = fit(model, image, label, crop, 20 if args.quick else args.max_fit_steps)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = measure(model, image, num_classes)
    print(
        f"CPU: {cpu_description()}; model {backbone}, crop {size[0]}x{size[1]}, batch 1, fp32; fit {steps} steps "
        f"({fit_seconds:.0f} s); measurement {time.perf_counter() - start:.0f} s"
    )
    print(
        f"trusted {result['trusted_fraction']:.1%}, trusted CE {result['loss_seg']:.4f}, L_adv {result['loss_adv']:.4f}"
    )
    print(f"alignment_scale ratio cra {result['ratio_cra']:.2e} entropy_min {result['ratio_entropy_min']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
