"""Inference throughput (images/s) of the demo model and of DeepLabv2-R101.

Cases: the demo model (ResNet-18 OS8 + ASPP, 19 classes) at 128x256 (batch 8) and 512x1024
(batch 1), and DeepLabv2-R101 at 512x1024 (batch 1). Random weights and inputs: speed does not
depend on them. Stride-8 logits are upsampled to the input size, as evaluation does.

    python bench/inference_speed.py            # 2 warm-up + 5 timed batches per case
    python bench/inference_speed.py --quick    # 1 + 2, about a minute on 2 CPU cores

The last line is the headline. On a shared machine, run it when the cores are idle: the numbers
drop by 2-6x while another process holds a core.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from crossregion.models import build_segmenter

# (backbone, batch size, height, width)
CASES: tuple[tuple[str, int, int, int], ...] = (
    ("resnet18", 8, 128, 256),
    ("resnet18", 1, 512, 1024),
    ("resnet101", 1, 512, 1024),
)
NUM_CLASSES = 19


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def measure_throughput(
    backbone: str,
    batch_size: int,
    height: int,
    width: int,
    *,
    device: torch.device,
    warmup: int,
    iterations: int,
    bf16: bool,
) -> float:
    """Median images/s of ``iterations`` timed batches after ``warmup`` untimed ones."""
    segmenter = build_segmenter(backbone, NUM_CLASSES).eval().to(device)
    images = torch.randn(batch_size, 3, height, width, device=device)
    if bf16:
        segmenter = segmenter.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    seconds = []
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
    ):
        for step in range(warmup + iterations):
            synchronize(device)
            start = time.perf_counter()
            logits = segmenter(images)["logits"]
            F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)
            synchronize(device)
            if step >= warmup:
                seconds.append(time.perf_counter() - start)
    return batch_size / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed batches per case")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast + channels_last")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warmup, iterations = (1, 2) if args.quick else (2, 5)
    device = torch.device(args.device)
    precision = "bf16+channels_last" if args.bf16 else "fp32"
    results = []
    for backbone, batch_size, height, width in CASES:
        images_per_second = measure_throughput(
            backbone,
            batch_size,
            height,
            width,
            device=device,
            warmup=warmup,
            iterations=iterations,
            bf16=args.bf16,
        )
        label = f"{backbone} {height}x{width} b{batch_size}"
        print(
            f"{label}: {images_per_second:.2f} img/s ({1 / images_per_second:.3f} s/img)",
            flush=True,
        )
        results.append(f"{label} {images_per_second:.2f}")
    print(
        f"inference img/s ({device.type}, {torch.get_num_threads()} threads, {precision}, "
        f"median of {iterations}): " + " | ".join(results)
    )


if __name__ == "__main__":
    main()
