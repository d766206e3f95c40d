"""Pseudo-label store vs the official float32 .npy + PNG: bytes per image, speed, mask agreement.

Maps are made as the official pipeline makes them: logits of a mostly confident segmentation
(Voronoi regions, a few unsure ones, per-pixel noise) at 1/``stride`` resolution, upsampled
bilinearly (align_corners=True) to 1024×2048, then softmax; pseudo label = argmax, entropy =
H / (K ln K). Agreement is that of the trusted masks e·r ≤ λ between the float32 entropy and
the decoded store entropy, for λ on a grid over [0.005, 0.05] and r ∈ {1, 0.5}.

Run: ``python bench/pseudo_label_store.py [--images 3]`` (about 2 s per image on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from crossregion.data.labels import CITYSCAPES_19
from crossregion.data.pseudo_labels import PseudoLabelStore, PseudoLabelWriter
from crossregion.trust import normalized_entropy

HEIGHT, WIDTH, NUM_CLASSES = 1024, 2048, 19
THRESHOLDS = np.linspace(0.005, 0.05, 46)
RARE_FACTORS = (1.0, 0.5)

# (name, logit stride, number of regions, noise std, share of unsure regions)
SCENARIOS = (
    ("stride 8 (brief)", 8, 40, 0.6, 0.05),
    ("stride 16 (official 1024x512 input)", 16, 40, 0.6, 0.05),
    ("stride 8, noisy, 15% unsure regions", 8, 80, 1.0, 0.15),
)


def realistic_maps(seed: int, stride: int, num_regions: int, noise: float, unsure_share: float):
    generator = torch.Generator().manual_seed(seed)
    low_height, low_width = HEIGHT // stride, WIDTH // stride
    centres = torch.rand(num_regions, 2, generator=generator) * torch.tensor([low_height, low_width])
    region_class = torch.randint(0, NUM_CLASSES, (num_regions,), generator=generator)
    margin = 6 + 8 * torch.rand(num_regions, generator=generator)
    margin[torch.rand(num_regions, generator=generator) < unsure_share] = 2.0
    rows, cols = torch.meshgrid(torch.arange(low_height).float(), torch.arange(low_width).float(), indexing="ij")
    distance = (rows[None] - centres[:, 0, None, None]) ** 2 + (cols[None] - centres[:, 1, None, None]) ** 2
    region = distance.argmin(0)
    logits = noise * torch.randn(1, NUM_CLASSES, low_height, low_width, generator=generator)
    logits.scatter_add_(1, region_class[region][None, None], margin[region][None, None])
    probs = torch.softmax(F.interpolate(logits, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=True), dim=1)
    return probs.argmax(1)[0].to(torch.uint8).numpy(), normalized_entropy(probs)[0].numpy()


def official_bytes(pseudo_label: np.ndarray, entropy: np.ndarray) -> int:
    """The official step-2 output of one image: palettised label PNG + float32 (1,1,H,W) .npy."""
    npy = io.BytesIO()
    np.save(npy, entropy[None, None].astype(np.float32))
    png = io.BytesIO()
    label_image = Image.fromarray(pseudo_label)
    label_image.putpalette([c for colour in CITYSCAPES_19.palette for c in colour])
    label_image.save(png, format="PNG")
    return len(npy.getvalue()) + len(png.getvalue())


def run_scenario(scenario, num_images: int) -> dict:
    _, stride, num_regions, noise, unsure_share = scenario
    maps = [realistic_maps(seed, stride, num_regions, noise, unsure_share) for seed in range(num_images)]
    names = [f"city/image_{index:03d}" for index in range(num_images)]
    with tempfile.TemporaryDirectory() as folder:
        writer = PseudoLabelWriter(
            folder,
            {
                "num_classes": NUM_CLASSES,
                "class_names": list(CITYSCAPES_19.class_names),
                "palette": [list(c) for c in CITYSCAPES_19.palette],
                "dataset": "bench",
                "split": "train",
                "root": "-",
                "names": names,
                "checkpoint": None,
                "input_size": None,
                "flip": False,
                "threshold": 0.01,
                "rare_share": 0.01,
                "rare_factor": 0.5,
            },
        )
        start = time.perf_counter()
        for name, (pseudo_label, entropy) in zip(names, maps):
            writer.write(name, pseudo_label, entropy)
        write_seconds = (time.perf_counter() - start) / num_images
        writer.finish()
        store = PseudoLabelStore(folder)
        start = time.perf_counter()
        decoded = [store.load(name)[1] for name in names]
        read_seconds = (time.perf_counter() - start) / num_images
        files_per_image = (("labels", ".png"), ("entropy", ".png"), ("image_stats", ".json"))
        ours = np.mean(
            [
                sum((store.path / kind / f"{name}{suffix}").stat().st_size for kind, suffix in files_per_image)
                for name in names
            ]
        )
    official = np.mean([official_bytes(label, entropy) for label, entropy in maps])
    worst = 1.0
    for (_, entropy), approximate in zip(maps, decoded):
        for threshold in THRESHOLDS:
            for factor in RARE_FACTORS:
                effective = threshold / factor
                worst = min(worst, float(((entropy <= effective) == (approximate <= effective)).mean()))
    untrusted = float(np.mean([(entropy > 0.01).mean() for _, entropy in maps]))
    return {
        "ours": ours,
        "official": official,
        "write": write_seconds,
        "read": read_seconds,
        "worst_agreement": worst,
        "untrusted": untrusted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="images per scenario (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(
        f"{'scenario':40s} {'e>0.01':>7s} {'ours B':>9s} {'official B':>11s} {'ratio':>6s} "
        f"{'npy ratio':>9s} {'write s':>8s} {'read s':>7s} {'worst agree':>11s}"
    )
    results = []
    for scenario in SCENARIOS:
        result = run_scenario(scenario, args.images)
        results.append(result)
        print(
            f"{scenario[0]:40s} {result['untrusted']:7.1%} {result['ours']:9.0f} {result['official']:11.0f} "
            f"{result['official'] / result['ours']:6.1f} {8_388_736 / result['ours']:9.1f} "
            f"{result['write']:8.2f} {result['read']:7.2f} {result['worst_agreement']:11.5%}"
        )
    brief = results[0]
    print(
        f"HEADLINE: {brief['ours'] / 1e3:.0f} kB per 1024x2048 image (label + entropy + stats) vs "
        f"{brief['official'] / 1e6:.2f} MB official npy+png ({brief['official'] / brief['ours']:.1f}x smaller, "
        f"{8_388_736 / brief['ours']:.1f}x vs the .npy alone); worst mask agreement {brief['worst_agreement']:.4%} "
        f"over λ in [0.005, 0.05] x factor {{1, 0.5}}; "
        f"write {brief['write']:.2f} s, read {brief['read']:.2f} s per image"
    )


if __name__ == "__main__":
    main()
