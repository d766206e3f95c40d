"""Accuracy on the synthetic benchmark: the paper's Table 1 and Table 3 analogs over three seeds.

Runs the ``demo`` pipeline preset with every CDA method (FADA, ADVENT, AdaptSegNet) and both
Table-3 baselines, once per training seed (``engine.seed``; the benchmark data are the demo's,
fixed), into ``OUTPUT/seed<N>``. Each seed's stages are cached, so an interrupted run resumes
where it stopped and a finished one only re-reads its results. ``bench/domain_gap.py`` trains
the source and CDA stages under the same names and configs, so pointed at its output folder
this benchmark reuses those models and trains only pseudo labels, CRA and the baselines. Then reports mean ± sample std
over the seeds of: source-only, oracle, each CDA model, the no-training baseline (target
BatchNorm statistics), +CRA and Δ (Table 1), pseudo-label only, entropy minimisation and CRA
(Table 3), and the paper's premises (trusted-pixel precision, untrusted share, share of the
errors inside the untrusted region before and after CRA).

    python bench/accuracy.py --output runs/bench_domain_gap        # after bench/domain_gap.py: ~20 min
    python bench/accuracy.py --output runs/bench_accuracy          # on its own: ~55 min on 2 idle cores
    python bench/accuracy.py --output /tmp/acc --seeds 0 --quick   # smoke: tiny sizes, ~2 min

Writes ``OUTPUT/accuracy.md`` and ``accuracy.json``; the last line is the headline
(``accuracy CRA Δ ...``); exits non-zero if a number is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from crossregion.demo import QUICK_SYNTH_ARGUMENTS, SYNTH_ARGUMENTS, demo_pipeline_config, ensure_benchmark
from crossregion.pipeline import BASELINE_TITLES, StageSpec, run_pipeline

CDA_METHODS = ("fada", "advent", "adaptsegnet")
# --quick: every training stage 2 iterations at 32x64 on a 12/6/4-image benchmark.
QUICK_TRAINING = ("optim.max_iters=2", "optim.stop_iter=2", "data.batch_size=2")
ROW_KEYS = ("cda", "bn_target", "cra", *BASELINE_TITLES, "trusted_fraction", "trusted_precision", "untrusted_share",
            "pseudo_label_accuracy", "error_share_untrusted_cda", "error_share_untrusted_cra")


def quick_stage(spec: StageSpec) -> StageSpec:
    """``spec`` with two iterations and 32x64 crops (keeps its wiring placeholders)."""
    crops = [f"data.{kind}.crop=[32, 64]" for kind in ("source", "target")
             if any(o.startswith(f"data.{kind}.crop") for o in spec.overrides)]
    kept = [o for o in spec.overrides if not o.startswith(("optim.max_iters", "optim.stop_iter", "data."))]
    return StageSpec(spec.preset, (*kept, *QUICK_TRAINING, *crops))


def run_seed(output: Path, data_dir: Path, seed: int, quick: bool) -> dict:
    cfg = demo_pipeline_config(data_dir)
    missing = [name for name in BASELINE_TITLES if name not in cfg.baselines]
    if missing:
        raise ValueError(f"the demo pipeline has no baseline stage {missing}; the Table-3 analog needs both")
    cfg = dataclasses.replace(cfg, cda_methods=CDA_METHODS,
                              common_overrides=(*cfg.common_overrides, f"engine.seed={seed}"))
    if quick:
        cfg = dataclasses.replace(
            cfg, source=quick_stage(cfg.source), oracle=cfg.oracle and quick_stage(cfg.oracle), cra=quick_stage(cfg.cra),
            cda={name: quick_stage(spec) for name, spec in cfg.cda.items()},
            baselines={name: quick_stage(spec) for name, spec in cfg.baselines.items()}, panel_images=1,
        )
    return run_pipeline(cfg, output / f"seed{seed}")


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


def summarize(runs: list[dict]) -> dict:
    summary = {"seeds": len(runs), "source_only": mean_std([r["source_only"] for r in runs]),
               "oracle": mean_std([r["oracle"] for r in runs]), "methods": {}}
    for method in CDA_METHODS:
        rows = [r["methods"][method] for r in runs]
        stats = {key: mean_std([row.get(key) for row in rows]) for key in ROW_KEYS}
        stats["delta"] = mean_std([row["cra"] - row["cda"] for row in rows])
        summary["methods"][method] = stats
    return summary


def markdown(summary: dict) -> str:
    methods = summary["methods"]
    lines = [
        f"mIoU (%) on synthetic target val, mean ± std over {summary['seeds']} seeds.",
        "",
        f"source-only {cell(summary['source_only'])} · oracle (target labels, reference) {cell(summary['oracle'])}",
        "",
        "### Table 1 analog",
        "",
        "| CDA method | base mIoU | + target BN stats | +CRA mIoU | Δ |",
        "|---|---|---|---|---|",
    ]
    for name, s in methods.items():
        lines.append(f"| {name} | {cell(s['cda'])} | {cell(s['bn_target'])} | {cell(s['cra'])} | {cell(s['delta'], sign=True)} |")
    lines += ["", "### Table 3 analog", "", "| CDA | CDA mIoU | pseudo-label only | entropy min. | CRA |",
              "|---|---|---|---|---|"]
    for name, s in methods.items():
        lines.append(f"| {name} | {cell(s['cda'])} | {cell(s['pseudo_label_only'])} | {cell(s['entropy_min'])} | "
                     f"{cell(s['cra'])} |")
    lines += ["", "### The paper's premises (target train, λ = 0.01, rare-class factor 0.5)", "",
              "| CDA | trusted precision % | untrusted share % | pseudo-label accuracy % | errors in untrusted, CDA % "
              "| errors in untrusted, after CRA % |", "|---|---|---|---|---|---|"]
    for name, s in methods.items():
        lines.append(f"| {name} | {cell(s['trusted_precision'], 100)} | {cell(s['untrusted_share'], 100)} | "
                     f"{cell(s['pseudo_label_accuracy'], 100)} | {cell(s['error_share_untrusted_cda'], 100)} | "
                     f"{cell(s['error_share_untrusted_cra'], 100)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="run folder (cached stages per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny benchmark, 2 iterations per stage")
    args = parser.parse_args()
    start = time.perf_counter()
    data_dir = args.output / "data"
    ensure_benchmark(data_dir, QUICK_SYNTH_ARGUMENTS if args.quick else SYNTH_ARGUMENTS)
    runs = [run_seed(args.output, data_dir, seed, args.quick) for seed in args.seeds]
    summary = summarize(runs)
    text = markdown(summary)
    (args.output / "accuracy.md").write_text(text)
    (args.output / "accuracy.json").write_text(json.dumps(
        {"summary": summary, "runs": runs, "synth": QUICK_SYNTH_ARGUMENTS if args.quick else SYNTH_ARGUMENTS}, indent=2) + "\n")
    print(text)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    deltas = {name: s["delta"] for name, s in summary["methods"].items()}
    if any(delta is None for delta in deltas.values()):
        print("accuracy could not measure every method", file=sys.stderr)
        return 1
    print("accuracy CRA Δ " + ", ".join(f"{name} {cell(delta, sign=True)}" for name, delta in deltas.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
