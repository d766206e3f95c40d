"""CRA training-step speed and memory: our step against the official step, in one process.

Both steps run on the same segmenter weights, discriminator, batch and device:

- ours: ``crossregion.methods.cra.CRA.training_step`` (one forward pass, boolean masks on the
  device, one summed G update, then the D update), driven by the trainer's ``StepContext``;
- official: the step of zhijiew/CRA ``train_cra.py`` followed literally (docs/spec.md §1.5): the same
  batch forwarded twice, masks built each step as float64 NumPy arrays on the host from the
  entropy and pseudo labels, masked float64 losses, one SGD step on the summed gradients, then
  D on both detached feature maps.

Each case times ``--iters`` steps of each after ``--warmup`` steps, alternating the two so
machine noise hits both alike, and reports images/s, the ratio and the peak memory above the
pre-step baseline (CUDA: ``max_memory_allocated``; CPU: RSS sampled every 2 ms, after
``malloc_trim`` so one step's freed memory does not hide the next one's growth).

    python bench/cra_step.py                 # demo model 64x128 b8, DeepLabv2-R101 256x512 b1 (CPU)
    python bench/cra_step.py --quick         # smoke size, a few seconds
    python bench/cra_step.py --device cuda --backbone resnet101 --crop 512 1024 --batch 4 --amp bf16 --channels-last

The last line is the headline, e.g. ``cra_step speedup 2.1x``; the exit status is non-zero if a
case could not be measured.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from crossregion.config.io import load_config
from crossregion.data.pseudo_labels import PseudoLabelWriter
from crossregion.engine.amp import autocast
from crossregion.engine.trainer import StepContext
from crossregion.methods import METHODS
from crossregion.models import build_segmenter

IGNORE_INDEX = 255
# (backbone, batch, height, width) of the default cases: the demo model at the demo crop, and
# DeepLabv2-R101 at the CPU crop of the issue.
DEFAULT_CASES = (("resnet18", 8, 64, 128), ("resnet101", 1, 256, 512))
QUICK_CASES = (("resnet18", 2, 32, 64),)


class PeakMemory:
    """Peak memory above the level at ``start`` (bytes): CUDA allocator, or sampled process RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._libc = ctypes.CDLL("libc.so.6") if device.type == "cpu" and sys.platform == "linux" else None

    def _rss(self) -> int:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * 4096

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        if self._libc is not None:
            self._libc.malloc_trim(0)  # return freed heap to the OS so growth shows in RSS
        self.base = self.peak = self._rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def bytes(self) -> int:
        return self.peak - self.base


def make_store(folder: Path, num_classes: int, height: int, width: int) -> Path:
    """A one-image pseudo-label store: CRA reads its class counts (rare classes) when built."""
    rng = np.random.default_rng(0)
    writer = PseudoLabelWriter(
        folder,
        {
            "num_classes": num_classes,
            "class_names": [f"c{k}" for k in range(num_classes)],
            "palette": [[k, k, k] for k in range(num_classes)],
            "dataset": "cityscapes",
            "split": "train",
            "root": str(folder),
            "names": ["bench"],
            "checkpoint": None,
            "input_size": None,
            "flip": False,
            "threshold": 0.01,
            "rare_share": 0.01,
            "rare_factor": 0.5,
        },
    )
    labels = rng.integers(0, num_classes, size=(height, width), dtype=np.uint8)
    entropy = (rng.random((height, width)) ** 3 / num_classes).astype(np.float32)
    writer.write("bench", labels, entropy)
    writer.finish()
    return folder


def make_batch(num_classes: int, batch: int, height: int, width: int, device: torch.device) -> dict:
    """A target batch as the CRA data path yields it; about 70% of pixels trusted at λ = 0.01."""
    generator = torch.Generator().manual_seed(0)
    entropy = torch.rand(batch, height, width, generator=generator) ** 3 / num_classes
    entropy[:, :, -2:] = -1.0  # a padded strip: neither trusted nor untrusted
    return {
        "image": torch.randn(batch, 3, height, width, generator=generator).to(device),
        "pseudo_mask": torch.randint(0, num_classes, (batch, height, width), generator=generator).to(device),
        "entropy": entropy.to(device),
    }


def official_step(segmenter, discriminator, opt_g, opt_d, batch, factors: np.ndarray, threshold: float, cfg) -> None:
    """zhijiew/CRA train_cra.py, one iteration, literally (docs/spec.md §1.5); ``threshold`` is λ."""
    temperature, clip = cfg.seg_temperature, cfg.soft_label_clip
    image = batch["image"]
    height, width = image.shape[-2:]
    num_classes = factors.shape[0]
    # Masks on the host as float64 NumPy arrays, every step.
    entropy = batch["entropy"].cpu().numpy().astype(np.float64)
    label = batch["pseudo_mask"].cpu().numpy()
    table = np.ones(256)
    table[:num_classes] = factors
    entropy = np.where(entropy == -1, entropy, entropy * table[label])
    src_mask = ((entropy <= threshold) & (entropy != -1)).astype(np.float64)
    tgt_mask = (entropy > threshold).astype(np.float64)
    src_label = np.where(src_mask > 0, label, IGNORE_INDEX)
    src_mask_t = torch.from_numpy(src_mask).to(image.device)
    tgt_mask_t = torch.from_numpy(tgt_mask).to(image.device)
    src_label_t = torch.from_numpy(src_label).long().to(image.device)
    pixels = image.shape[0] * height * width

    def up(tensor):
        return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=True)

    opt_g.zero_grad()
    opt_d.zero_grad()
    out_1 = segmenter(image)  # forward #1: self-training
    src_pred = up(out_1["logits"]) / temperature
    loss_seg = F.cross_entropy(src_pred, src_label_t, ignore_index=IGNORE_INDEX)
    loss_seg.backward()
    src_soft = F.softmax(src_pred, dim=1).detach().clamp(max=clip)
    out_2 = segmenter(image)  # forward #2: the same batch again
    tgt_soft = F.softmax(up(out_2["logits"]) / temperature, dim=1).detach().clamp(max=clip)
    tgt_d = F.log_softmax(up(discriminator(out_2["features"])), dim=1)
    loss_adv = cfg.adv_weight * (tgt_mask_t * -(tgt_soft * tgt_d[:, :num_classes]).sum(1)).sum() / pixels
    loss_adv.backward()
    opt_g.step()
    opt_d.zero_grad()
    src_d = F.log_softmax(up(discriminator(out_1["features"].detach())), dim=1)
    tgt_d = F.log_softmax(up(discriminator(out_2["features"].detach())), dim=1)
    loss_d = (
        cfg.disc_weight_trusted * (src_mask_t * -(src_soft * src_d[:, :num_classes]).sum(1)).sum() / pixels
        + cfg.disc_weight_untrusted * (tgt_mask_t * -(tgt_soft * tgt_d[:, num_classes:]).sum(1)).sum() / pixels
    )
    loss_d.backward()
    opt_d.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(backbone: str, batch_size: int, height: int, width: int, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    num_classes = 19
    with tempfile.TemporaryDirectory() as folder:
        store = make_store(Path(folder) / "store", num_classes, height, width)
        cfg = load_config(
            "cra",
            [
                f"method.pseudo_label_store={store}",
                f"model.backbone={backbone}",
                f"engine.amp={args.amp}",
                "model.pretrained=null",
            ],
        )
        method = METHODS.get("cra")(cfg.method, num_classes=num_classes)
    torch.manual_seed(0)
    segmenter = build_segmenter(backbone, num_classes)
    models = method.build_models(segmenter)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    for model in models.values():
        model.to(device, memory_format=memory_format).train()
    batch = make_batch(num_classes, batch_size, height, width, device)
    batch["image"] = batch["image"].contiguous(memory_format=memory_format)
    optimizers = method.build_optimizers(models, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    factors = method.class_factors.double().numpy()

    def ours() -> None:
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        ctx = StepContext(iteration=0, device=device, optimizers=optimizers, scaler=scaler)
        with autocast(device, args.amp):
            method.training_step(models, {"target": batch}, ctx)

    def official() -> None:
        with autocast(device, args.amp):
            official_step(
                models["segmenter"],
                models["discriminator"],
                optimizers["segmenter"],
                optimizers["discriminator"],
                batch,
                factors,
                method.entropy_threshold,
                cfg.method,
            )

    steps = {"ours": ours, "official": official}
    times: dict[str, list[float]] = {name: [] for name in steps}
    memory: dict[str, int] = {}
    for _ in range(args.warmup):  # both warm first: one-time allocations are no step's peak
        for step in steps.values():
            step()
    for name, step in steps.items():
        with PeakMemory(device) as peak:
            step()
        memory[name] = peak.bytes
    for _ in range(args.iters):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    result = {
        "backbone": backbone,
        "batch": batch_size,
        "crop_hw": [height, width],
        "device": str(device),
        "amp": args.amp,
        "channels_last": args.channels_last,
    }
    for name in steps:
        seconds = statistics.median(times[name])
        result[name] = {"s_per_step": seconds, "img_per_s": batch_size / seconds, "peak_mib": memory[name] / 2**20}
    result["speedup"] = result["ours"]["img_per_s"] / result["official"]["img_per_s"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: ResNet-18, 32x64, batch 2, 1+2 steps")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--backbone", help="one case with this backbone (needs --crop and --batch)")
    parser.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"))
    parser.add_argument("--batch", type=int)
    parser.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast precision")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, help="untimed steps per variant (default 2, quick 1)")
    parser.add_argument("--iters", type=int, help="timed steps per variant (default 5, quick 2)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.iters = args.iters if args.iters is not None else (2 if args.quick else 5)
    if args.backbone is not None:
        if args.crop is None or args.batch is None:
            parser.error("--backbone needs --crop H W and --batch N")
        cases = ((args.backbone, args.batch, *args.crop),)
    else:
        cases = QUICK_CASES if args.quick else DEFAULT_CASES
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, amp {args.amp}, "
        f"channels_last {args.channels_last}"
    )
    print("| model | batch | crop | ours img/s | official img/s | speedup | ours peak MiB | official peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for case in cases:
        try:
            result = run_case(*case, args)
        except (RuntimeError, ValueError) as error:
            print(f"cra_step could not measure {case}: {error}", file=sys.stderr)
            return 1
        results.append(result)
        ours, official = result["ours"], result["official"]
        print(
            f"| {result['backbone']} | {result['batch']} | {case[2]}x{case[3]} | {ours['img_per_s']:.2f} | "
            f"{official['img_per_s']:.2f} | {result['speedup']:.2f}x | {ours['peak_mib']:.0f} | "
            f"{official['peak_mib']:.0f} |",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print("cra_step speedup " + ", ".join(f"{r['backbone']} {r['speedup']:.2f}x" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
