"""Accuracy on the embedded benchmark: the paper's Table 1 and Table 3 analogs over three seeds.

Runs the ``synth_benchmark`` pipeline preset (configs/pipelines/synth_benchmark.yaml), in fp32,
once per training seed (``engine.seed``), each into ``OUTPUT/seed<N>``: source-only, the oracle,
and per CDA method (FADA, ADVENT, AdaptSegNet) its no-training baseline (target BatchNorm
statistics, "AdaBN"), pseudo labels on target train and CRA; after FADA (as in the paper's
Table 3) also the two baselines on the same pseudo labels, training on the trusted pseudo labels
only and adding entropy minimisation on the untrusted region. Stages are cached, so an
interrupted run resumes where it stopped; ``bench/regime.py`` trains the source, oracle and CDA
stages under the same names and configs, so pointed at the same folder either adds only what
the other has not trained.

Reports mean ± sample std over the seeds: source-only, oracle, each CDA model, AdaBN, +CRA and
Δ (Table 1), pseudo-label only, entropy minimisation and CRA (Table 3), and the paper's premises
(trusted fraction and precision, share of the errors inside the untrusted region before and
after CRA); and the wall time of those stages, here and as estimated for the 2-core AVX2
machine through the calibration step (bench/common.py).

    python bench/accuracy.py --output runs/bench                     # ~30 min on the development machine
    python bench/accuracy.py --output runs/bench_seed7 --benchmark-seed 7 --size 96 192 --seeds 0
    python bench/accuracy.py --output /tmp/acc --seeds 0 --quick     # smoke, ~1 min

Writes ``OUTPUT/accuracy.md`` and ``accuracy.json``; the last line is the headline
(``accuracy CRA Δ ...``); exits non-zero if a number is missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
from common import (
    PIPELINE_PRESET,
    REFERENCE_STEP_SECONDS,
    add_benchmark_arguments,
    calibration_step_seconds,
    cell,
    cpu_description,
    mean_std,
    prepared_benchmark,
    with_seed,
)

from crossregion.app.pipeline.config import BASELINE_TITLES, PipelineConfig
from crossregion.app.pipeline.run import run_pipeline

ROW_KEYS = (
    "cda",
    "bn_target",
    "cra",
    *BASELINE_TITLES,
    "trusted_fraction",
    "trusted_precision",
    "untrusted_share",
    "pseudo_label_accuracy",
    "error_share_untrusted_cda",
    "error_share_untrusted_cra",
)


def run_seed(output: Path, cfg: PipelineConfig, seed: int) -> dict:
    results = run_pipeline(with_seed(cfg, seed), output / f"seed{seed}")
    results["wall_seconds"] = sum(
        float(json.loads((Path(stage["folder"]) / "stage.json").read_text()).get("wall_seconds", 0.0))
        for stage in results["stages"].values()
    )
    return results


def summarize(runs: list[dict]) -> dict:
    summary = {
        "seeds": len(runs),
        "source_only": mean_std([r["source_only"] for r in runs]),
        "oracle": mean_std([r["oracle"] for r in runs]),
        "methods": {},
    }
    for method in runs[0]["methods"]:
        rows = [r["methods"][method] for r in runs]
        stats = {key: mean_std([row.get(key) for row in rows]) for key in ROW_KEYS}
        stats["delta"] = mean_std([row["cra"] - row["cda"] for row in rows])
        summary["methods"][method] = stats
    return summary


def markdown(summary: dict, runs: list[dict], synth: dict, calibration: float) -> str:
    methods = summary["methods"]
    stage_seconds = sum(run["wall_seconds"] for run in runs)
    lines = [
        f"{datetime.date.today().isoformat()}; CPU: {cpu_description()}; torch {torch.__version__}. Benchmark "
        f"{synth}; {summary['seeds']} training seeds. The stages below took {stage_seconds / 60:.1f} min here (as "
        f"recorded by each stage); the calibration step took {calibration:.3f} s here against "
        f"{REFERENCE_STEP_SECONDS:.2f} s on the 2-core AVX2 machine: ≈ "
        f"{stage_seconds * REFERENCE_STEP_SECONDS / calibration / 60:.0f} min there.",
        "",
        f"mIoU (%) on synthetic target val, mean ± std over {summary['seeds']} seeds.",
        "",
        f"source-only {cell(summary['source_only'])} · oracle (target labels, reference) {cell(summary['oracle'])}",
        "",
        "#### Table 1 analog",
        "",
        "| CDA method | base mIoU | AdaBN (target BN stats) | +CRA mIoU | Δ |",
        "|---|---|---|---|---|",
    ]
    for name, s in methods.items():
        lines.append(
            f"| {name} | {cell(s['cda'])} | {cell(s['bn_target'])} | {cell(s['cra'])} | {cell(s['delta'], sign=True)} |"
        )
    lines += [
        "",
        "#### Table 3 analog",
        "",
        "| CDA | CDA mIoU | pseudo-label only | entropy min. | CRA |",
        "|---|---|---|---|---|",
    ]
    for name, s in methods.items():
        if s["pseudo_label_only"] is None:
            continue
        lines.append(
            f"| {name} | {cell(s['cda'])} | {cell(s['pseudo_label_only'])} | {cell(s['entropy_min'])} | "
            f"{cell(s['cra'])} |"
        )
    lines += [
        "",
        "#### The paper's premises (target train, λ = 0.01, rare-class factor 0.5)",
        "",
        "| CDA | trusted fraction % | trusted precision % | pseudo-label accuracy % | errors in untrusted, CDA % "
        "| errors in untrusted, after CRA % |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in methods.items():
        lines.append(
            f"| {name} | {cell(s['trusted_fraction'], 100)} | {cell(s['trusted_precision'], 100)} | "
            f"{cell(s['pseudo_label_accuracy'], 100)} | {cell(s['error_share_untrusted_cda'], 100)} | "
            f"{cell(s['error_share_untrusted_cra'], 100)} |"
        )
    lines += ["", "Per seed (seed: CDA → +CRA; pseudo-label only, entropy min. after FADA):", ""]
    for seed, run in zip(summary["seed_list"], runs):
        parts = [f"{m} {row['cda']:.2f} → {row['cra']:.2f}" for m, row in run["methods"].items()]
        parts += [
            f"after {m}: PL-only {row['pseudo_label_only']:.2f}, EM {row['entropy_min']:.2f}"
            for m, row in run["methods"].items()
            if "pseudo_label_only" in row
        ]
        lines.append(f"- seed {seed}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_benchmark_arguments(parser)
    args = parser.parse_args()
    start = time.perf_counter()
    calibration = calibration_step_seconds()
    cfg, synth = prepared_benchmark(args)
    missing = [name for name in BASELINE_TITLES if name not in cfg.baselines]
    if missing or cfg.oracle is None:
        raise ValueError(f"the {PIPELINE_PRESET} pipeline needs an oracle and both baselines (missing: {missing})")
    runs = [run_seed(args.output, cfg, seed) for seed in args.seeds]
    summary = {**summarize(runs), "seed_list": args.seeds}
    text = markdown(summary, runs, synth, calibration)
    (args.output / "accuracy.md").write_text(text)
    (args.output / "accuracy.json").write_text(
        json.dumps(
            {"summary": summary, "runs": runs, "synth": synth, "calibration_step_seconds": calibration}, indent=2
        )
        + "\n"
    )
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
