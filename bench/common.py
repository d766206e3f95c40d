"""What the accuracy benchmarks share: benchmark arguments, seeds, mean ± std, the CPU calibration step."""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from crossregion.app.demo import QUICK_SYNTH_ARGUMENTS, SYNTH_ARGUMENTS, demo_pipeline_config
from crossregion.app.pipeline.config import PipelineConfig, StageSpec

PIPELINE_PRESET = "synth_benchmark"
# fp32 on every CPU, whatever engine.amp=auto would pick: the same numbers on every machine, and
# wall times that the fp32 calibration step converts between machines.
FP32 = ("engine.amp=none", "engine.channels_last=false")

# --quick: every training stage 2 iterations at batch 2 on a 12/6/4-image benchmark.
QUICK_TRAINING = ("optim.max_iters=2", "optim.stop_iter=2", "data.batch_size=2")
# The calibration step: the seconds one fp32 iteration of a fixed model takes on the slowest CPU this
# project supports (2-core AMD EPYC, AVX2 only, no AVX-512; measured 0.59-0.61 s there, 2026-11-30).
# Dividing a wall time by this step's time here and multiplying by REFERENCE_STEP_SECONDS estimates
# the wall time on that machine.
REFERENCE_STEP_SECONDS = 0.60


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, required=True, help="run folder (cached stages per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (engine.seed)")
    parser.add_argument(
        "--benchmark-seed",
        type=int,
        default=SYNTH_ARGUMENTS["seed"],
        help="seed of the generated benchmark (the demo's by default)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        default=(SYNTH_ARGUMENTS["height"], SYNTH_ARGUMENTS["width"]),
        help="image size of the generated benchmark (the demo's by default)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny benchmark, 2 iterations per stage")
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="CDA",
        help="CDA methods to run (default: the pipeline preset's cda_methods), e.g. fada iast proda",
    )


def synth_arguments(args: argparse.Namespace) -> dict[str, int]:
    """The ``generate_benchmark`` arguments the command line asks for."""
    if args.quick:
        return dict(QUICK_SYNTH_ARGUMENTS)
    return {**SYNTH_ARGUMENTS, "seed": args.benchmark_seed, "height": args.size[0], "width": args.size[1]}


def benchmark_pipeline(data_dir: Path, quick: bool) -> PipelineConfig:
    """The ``synth_benchmark`` pipeline on the benchmark in ``data_dir``, in fp32; tiny with ``quick``."""
    cfg = demo_pipeline_config(data_dir, preset=PIPELINE_PRESET)
    cfg = dataclasses.replace(cfg, common_overrides=(*cfg.common_overrides, *FP32))
    if not quick:
        return cfg
    return dataclasses.replace(
        cfg,
        source=quick_stage(cfg.source),
        oracle=cfg.oracle and quick_stage(cfg.oracle),
        cra=quick_stage(cfg.cra),
        cda={
            name: tuple(map(quick_stage, spec)) if isinstance(spec, tuple) else quick_stage(spec)
            for name, spec in cfg.cda.items()
        },
        baselines={name: quick_stage(spec) for name, spec in cfg.baselines.items()},
        panel_images=1,
    )


def prepared_benchmark(args: argparse.Namespace) -> tuple[PipelineConfig, dict[str, int]]:
    """Generate (or reuse) the benchmark the command line asks for under ``OUTPUT/data``; returns
    the benchmark pipeline on it and the generator arguments."""
    from crossregion.app.demo import ensure_benchmark

    data_dir = args.output / "data"
    synth = synth_arguments(args)
    ensure_benchmark(data_dir, synth)
    cfg = benchmark_pipeline(data_dir, args.quick)
    if getattr(args, "methods", None):
        # The Table-3 baselines run after the methods that are both asked for and configured for them.
        baseline_methods = tuple(m for m in cfg.baseline_methods if m in args.methods)
        cfg = dataclasses.replace(cfg, cda_methods=tuple(args.methods), baseline_methods=baseline_methods)
    return cfg, synth


def with_seed(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    """``cfg`` with every training stage at ``engine.seed=seed``."""
    return dataclasses.replace(cfg, common_overrides=(*cfg.common_overrides, f"engine.seed={seed}"))


def quick_stage(spec: StageSpec) -> StageSpec:
    """``spec`` with two iterations at batch 2 (keeps its other overrides and placeholders)."""
    kept = [o for o in spec.overrides if not o.startswith(("optim.max_iters", "optim.stop_iter", "data.batch_size"))]
    return StageSpec(spec.preset, (*kept, *QUICK_TRAINING))


def mean_std(values: list[float | None]) -> tuple[float, float] | None:
    """Mean and sample std (0 for one value); None if any value is missing."""
    if not values or any(value is None for value in values):
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(stats: tuple[float, float] | None, scale: float = 1.0, sign: bool = False) -> str:
    if stats is None:
        return "–"
    mean, std = stats[0] * scale, stats[1] * scale
    return f"{mean:+.2f} ± {std:.2f}" if sign else f"{mean:.2f} ± {std:.2f}"


def calibration_step_seconds(repeats: int = 5) -> float:
    """Median seconds of the calibration step here: dilated ResNet-18 DeepLab, batch 8, 64x128, fp32.

    One source-only iteration (forward, cross-entropy, backward, Adam step) on random data, with
    the threads torch uses for the benchmark itself.
    """
    from crossregion.models.deeplabv2 import build_segmenter

    generator = torch.Generator().manual_seed(0)
    model = build_segmenter("resnet18", 19)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(8, 3, 64, 128, generator=generator)
    labels = torch.randint(0, 19, (8, 64, 128), generator=generator)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        logits = torch.nn.functional.interpolate(model(images)["logits"], size=(64, 128), mode="bilinear")
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def cpu_description() -> str:
    """CPU model and the flags that decide speed here (AVX2, AVX-512, bf16, AMX), from lscpu."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    model = fields.get("Model name", "?").strip()
    flags = set(fields.get("Flags", "").split())
    speed_flags = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{model}, {torch.get_num_threads()} threads, flags {' '.join(speed_flags) or 'none of avx2/avx512'}"
