"""Where the demo's time goes, and what each speed candidate buys, measured in one process.

On the demo's benchmark (generated under OUTPUT/data if missing) and its model (resnet18_half,
batch 8, 80x160, fp32):

- loading: one training sample (read + FADA's source transform) decoded from its PNG files vs
  from the in-memory copy the datasets keep for small splits (``DECODED_CACHE_BYTES``);
- step: one source-only training step (forward, CE, backward, Adam), contiguous vs channels-last
  vs ``torch.compile`` (its compile time reported apart);
- evaluation: one pass over target val, the cost every stage pays at its end.

Variants alternate, median of the timed repeats; ratios are against the first variant of each
group in the same run, so a loaded machine shifts both sides alike.

    python bench/demo_speed.py --output runs/bench          # ~3 min
    python bench/demo_speed.py --output /tmp/speed --quick  # smoke

Last line: ``demo_speed ...`` with the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cpu_description, prepared_benchmark

import crossregion.app  # noqa: F401  (fills the registries)
from crossregion.config.io import load_config
from crossregion.data import datasets
from crossregion.data.datasets import build_dataset
from crossregion.data.transforms import eval_transform, train_transform
from crossregion.eval.evaluate import evaluate_segmenter
from crossregion.models.deeplabv2 import build_segmenter


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loading(root: Path, repeats: int) -> dict[str, float]:
    spec = load_config("demo_fada").data.source
    transform = train_transform(spec, input_norm="imagenet")
    on_disk = build_dataset("gta5", root, "train", num_classes=19, transform=transform)
    in_memory = build_dataset("gta5", root, "train", num_classes=19, transform=transform)
    count = min(64, len(on_disk))
    for index in range(count):
        in_memory[index]  # decoded once, as in the first epoch
    original = datasets.DECODED_CACHE_BYTES
    datasets.DECODED_CACHE_BYTES = 0  # this instance reads from disk every time
    on_disk._decoded.clear()
    try:
        results = {"from PNG": [], "in memory": []}
        for _ in range(repeats):
            for name, dataset in (("from PNG", on_disk), ("in memory", in_memory)):
                start = time.perf_counter()
                for index in range(count):
                    dataset[index]
                results[name].append((time.perf_counter() - start) / count)
    finally:
        datasets.DECODED_CACHE_BYTES = original
    return {name: statistics.median(values) for name, values in results.items()}


def training_steps(size: tuple[int, int], repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, *size, generator=generator)
    labels = torch.randint(0, 19, (8, *size), generator=generator)

    def make(channels_last: bool, compiled: bool):
        torch.manual_seed(0)
        model = build_segmenter("resnet18_half", 19)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        forward = torch.compile(model) if compiled else model
        batch = images.contiguous(memory_format=torch.channels_last) if channels_last else images

        def step() -> None:
            logits = F.interpolate(forward(batch)["logits"], size=size, mode="bilinear", align_corners=True)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step

    variants = {
        "contiguous": make(False, False),
        "channels-last": make(True, False),
        "torch.compile": make(False, True),
    }
    start = time.perf_counter()
    variants["torch.compile"]()  # compiles
    compile_seconds = time.perf_counter() - start
    for step in variants.values():
        step()  # warm-up
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, step in variants.items():
            times[name].append(median_seconds(step, 1))
    result = {name: statistics.median(values) for name, values in times.items()}
    result["torch.compile: compile seconds"] = compile_seconds
    return result


def evaluation_pass(root: Path) -> float:
    model = build_segmenter("resnet18_half", 19).eval()
    transform = eval_transform(input_norm=model.input_norm)
    dataset = build_dataset("cityscapes", root, "val", num_classes=19, transform=transform)
    start = time.perf_counter()
    evaluate_segmenter(model, dataset, input_size=None, device=torch.device("cpu"), progress=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="run folder (the benchmark goes to OUTPUT/data)")
    parser.add_argument("--quick", action="store_true", help="smoke: tiny benchmark, one repeat")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    args.benchmark_seed, args.size, args.methods = 0, (80, 160), None
    _, synth = prepared_benchmark(args)
    data = args.output / "data"
    repeats = 1 if args.quick else args.repeats
    size = (synth["height"], synth["width"])
    print(f"CPU: {cpu_description()}; torch {torch.__version__}; benchmark {synth}; fp32")
    load = loading(data / "gta5", repeats)
    print(
        f"loading, s/sample: from PNG {load['from PNG']:.4f}, in memory {load['in memory']:.4f} "
        f"({load['in memory'] / load['from PNG']:.2f}x)"
    )
    steps = training_steps(size, repeats)
    base = steps["contiguous"]
    print(
        "source-only step, s: "
        + ", ".join(
            f"{name} {seconds:.3f} ({seconds / base:.2f}x)" for name, seconds in steps.items() if "compile " not in name
        )
        + f"; torch.compile took {steps['torch.compile: compile seconds']:.0f} s to compile"
    )
    evaluation = evaluation_pass(data / "cityscapes")
    print(f"one target-val evaluation pass: {evaluation:.1f} s")
    print(
        f"demo_speed loading {load['in memory'] / load['from PNG']:.2f}x, channels-last "
        f"{steps['channels-last'] / base:.2f}x, compile {steps['torch.compile'] / base:.2f}x "
        f"(+{steps['torch.compile: compile seconds']:.0f} s), eval pass {evaluation:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
