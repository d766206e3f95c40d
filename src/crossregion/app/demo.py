"""``crossregion demo --output DIR``: the whole pipeline on the embedded synthetic benchmark.

Generates the benchmark with fixed arguments into ``DIR/data`` (skipped when its ``synth.json``
already records the same arguments), runs the ``demo`` pipeline preset into ``DIR``, prints
the tables and writes ``DIR/report.html``. ``make demo`` runs it, within 10 minutes on a 2-core
AVX2 CPU (docs/benchmarks.md), and a second run reuses every finished stage.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import time
from pathlib import Path

from crossregion.files import check_output_folder
from crossregion.synth.benchmark import DEFAULT_ARGUMENTS

logger = logging.getLogger(__name__)

PRESET = "demo"
# The benchmark the demo preset is sized for; part of the demo's definition, not an option.
SYNTH_ARGUMENTS = DEFAULT_ARGUMENTS
# The tiny benchmark of the benchmarks' ``--quick`` smoke runs.
QUICK_SYNTH_ARGUMENTS = {
    "source_images": 12,
    "target_train_images": 6,
    "target_val_images": 4,
    "height": 48,
    "width": 96,
    "seed": 0,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("runs/demo"),
        help="run folder (default runs/demo): data/, one folder per stage, results.md",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="pipeline overrides, e.g. cda_methods=[fada,advent] (changes the time it takes)",
    )


def ensure_benchmark(data_dir: Path, arguments: dict[str, int] = SYNTH_ARGUMENTS) -> None:
    """Generate the synthetic benchmark into ``data_dir`` unless it is there with the same arguments
    and generator version.

    Raises:
        ValueError: ``data_dir`` holds files the generator did not write (a user's datasets, say):
            they are never deleted to make room.
    """
    if _benchmark_is_up_to_date(data_dir, arguments):
        logger.info("synthetic benchmark in %s is up to date", data_dir)
        return
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir.parent / f".{data_dir.name}.lock"
    with open(lock_path, "w") as lock:
        # Runs that share an output folder (training seeds side by side) would otherwise generate
        # into it at once; the second waits here and then finds the benchmark up to date.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _benchmark_is_up_to_date(data_dir, arguments):
                _generate_benchmark(data_dir, arguments)
        finally:
            lock_path.unlink(missing_ok=True)


def _benchmark_is_up_to_date(data_dir: Path, arguments: dict[str, int]) -> bool:
    from crossregion.synth.benchmark import GENERATOR_VERSION

    try:
        summary = json.loads((data_dir / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    expected = {"generator_version": GENERATOR_VERSION, **arguments}
    return isinstance(summary, dict) and all(summary.get(key) == value for key, value in expected.items())


def _generate_benchmark(data_dir: Path, arguments: dict[str, int]) -> None:
    from crossregion.synth.benchmark import generate_into, holds_only_a_benchmark

    if data_dir.is_dir() and any(data_dir.iterdir()) and not holds_only_a_benchmark(data_dir):
        raise ValueError(
            f"{data_dir} holds files the demo did not write; the demo generates its benchmark there and "
            "will not delete them: choose another --output, or move them away"
        )
    logger.info("generating the synthetic benchmark in %s", data_dir)
    # Only a benchmark the generator wrote (of other arguments) is replaced, never mixed in.
    generate_into(data_dir, {"source_layout": "gta5", **arguments}, force=True)


def demo_pipeline_config(data_dir: Path, overrides: list[str] | tuple[str, ...] = (), preset: str = PRESET):
    """A pipeline preset on the synthetic benchmark in ``data_dir`` (the demo's by default; the
    accuracy benchmarks use ``synth_benchmark``)."""
    from crossregion.app.pipeline.config import load_pipeline_config

    # Absolute roots: the stages' cache keys hold them, so `--output runs/bench` and
    # `--output /abs/path/runs/bench` must name the same stages, not retrain them all.
    data_dir = data_dir.resolve()
    roots = [
        f"dataset_roots={{gta5: {data_dir / 'gta5'}, cityscapes: {data_dir / 'cityscapes'}}}",
        f"target.root={data_dir / 'cityscapes'}",
    ]
    return load_pipeline_config(preset, [*roots, *overrides])


def main(args: argparse.Namespace) -> int:
    from crossregion.app.pipeline.run import run_pipeline, show_results

    check_output_folder(args.output)
    start = time.perf_counter()
    data_dir = args.output / "data"
    ensure_benchmark(data_dir)
    run_pipeline(demo_pipeline_config(data_dir, args.overrides), args.output)
    seconds = time.perf_counter() - start
    show_results(args.output, f"demo finished in {seconds:.0f} s; results in {args.output / 'results.md'}")
    return 0
