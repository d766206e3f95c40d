"""The self-training stage diagnosed: CRA and its Table-3 baselines side by side under recipe variants.

For each training seed, starts from the FADA model and pseudo-label store of the accuracy
benchmark (``OUTPUT/seed<N>``; trained first if missing, under the same stage names and configs
as ``bench/accuracy.py``) and trains CRA, pseudo-label only and entropy minimisation under each
variant of the stage's recipe (docs/benchmarks.md, "Diagnosing the self-training stage": the
design and decision rule were written before these runs). Every run evaluates target val every
25 iterations (reported only) and logs CRA's discriminator accuracy per region and, every 25
iterations, the ratio of the region term's gradient norm to the trusted CE's. After the runs: the
per-class regime of the store and the trusted/untrusted feature gap of FADA and of each model.

    python bench/cra_diagnosis.py --output runs/bench --seeds 0
    python bench/cra_diagnosis.py --output runs/bench --seeds 0 --variants control "no hue jitter"
    python bench/cra_diagnosis.py --output runs/bench --seeds 0 --matched-weight 0.05
    python bench/cra_diagnosis.py --output /tmp/diag --seeds 0 --quick     # smoke, ~1 min

Writes ``OUTPUT/cra_diagnosis.md`` and ``.json`` (the stages it finds finished, so runs of
different variants in separate processes add up); the last line is the headline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from common import add_benchmark_arguments, cpu_description, mean_std, prepared_benchmark, quick_stage, with_seed

from crossregion.app.pipeline.analysis import alignment_course, feature_gap, per_class_regime
from crossregion.app.pipeline.cache import STAGE_FILE, Stages
from crossregion.app.pipeline.config import StageSpec
from crossregion.app.pipeline.stages import bn_target_stage, cda_stage, pseudo_label_stage, training_stage

CDA = "fada"
METHODS = ("cra", "pseudo_label_only", "entropy_min")
# Every run: the time course and the alignment diagnostics (docs/benchmarks.md).
DIAGNOSTICS = ("engine.eval_period=25", "engine.log_period=25", "method.diagnostics_period=25")
# variant -> (overrides of every method's stage, the methods it applies to)
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # demo_cra before the decision rule chose its recipe (target hue jitter 0.2).
    "control": (("data.target.color_jitter=[0.5, 0.5, 0.5, 0.2]",), METHODS),
    "no hue jitter": (("data.target.color_jitter=[0.5, 0.5, 0.5, 0.0]",), METHODS),
    "frozen BN statistics": (("method.freeze_bn_statistics=true",), METHODS),
    "whole images": (("data.target.scale_range=[1.0, 1.0]", "data.target.crop=null"), METHODS),
    "D from FADA": (("method.discriminator_checkpoint=$cda_checkpoint",), ("cra",)),
    "2x length": (("optim.max_iters=468", "optim.stop_iter=300"), METHODS),
    # Without entropy minimisation: at weight 0.001 it has matched pseudo-label only to 0.01 mIoU
    # in every run there is, and 4x costs 10 CPU-minutes a method on the AVX2 machine.
    "4x length": (("optim.max_iters=936", "optim.stop_iter=600"), ("cra", "pseudo_label_only")),
    # The second round (docs/benchmarks.md, "The early fall: the optimiser's fresh start"), on the
    # recipe the first round chose; entropy minimisation left out of the screen for the reason above.
    "lr warm-up": (
        ("data.target.color_jitter=[0.5, 0.5, 0.5, 0.0]", "optim.warmup_iters=25"),
        ("cra", "pseudo_label_only"),
    ),
    # FADA's own lr where it stopped: 1e-4 * (1 - 400 / 624) ** 0.9.
    "lr at FADA's end": (
        ("data.target.color_jitter=[0.5, 0.5, 0.5, 0.0]", "optim.lr=4e-5"),
        ("cra", "pseudo_label_only"),
    ),
    # The third round: the same screen without any colour jitter; its rule chose it, so all three
    # methods run it.
    "no colour jitter": (("data.target.color_jitter=[0.0, 0.0, 0.0, 0.0]",), METHODS),
}
MATCHED = "matched weight"


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_")


def variant_overrides(name: str, method: str, matched_weight: float | None) -> tuple[str, ...] | None:
    """The stage overrides of ``name`` for ``method``; None if the variant does not apply to it."""
    if name == MATCHED:
        if matched_weight is None or method == "pseudo_label_only":
            return None
        key = "method.adv_weight" if method == "cra" else "method.entropy_weight"
        return (f"{key}={matched_weight}",)
    overrides, methods = VARIANTS[name]
    return overrides if method in methods else None


def base_stages(output: Path, cfg, seed: int):
    cfg = with_seed(cfg, seed)
    stages = Stages(output / f"seed{seed}")
    source = training_stage(stages, cfg, "00_source", cfg.source, {}, [])
    cda = cda_stage(stages, cfg, CDA, source)
    bn_target = bn_target_stage(stages, cfg, f"01_bn_target_{CDA}", cda)
    pseudo = pseudo_label_stage(stages, cfg, f"02_pseudo_{CDA}", cda)
    return cfg, stages, cda, bn_target, pseudo


def run_variants(output: Path, cfg, seed: int, variants: list[str], matched_weight: float | None, quick: bool) -> None:
    cfg, stages, cda, _, pseudo = base_stages(output, cfg, seed)
    wiring = {"cda_checkpoint": cda.outputs["checkpoint"], "pseudo_labels": pseudo.outputs["store"]}
    for variant in variants:
        for method in METHODS:
            overrides = variant_overrides(variant, method, matched_weight)
            if overrides is None:
                continue
            base = cfg.cra if method == "cra" else cfg.baselines[method]
            spec = StageSpec(base.preset, (*base.overrides, *DIAGNOSTICS, *overrides))
            if quick:  # the variants' own lengths (2x, 4x) too
                spec = quick_stage(spec)
            record = training_stage(stages, cfg, f"03_diag_{slug(variant)}_{method}", spec, wiring, [cda, pseudo])
            gap_file = record.folder / "feature_gap.json"
            if not gap_file.exists():
                gap = feature_gap(cfg, record.outputs["checkpoint"], pseudo.outputs["store"])
                gap_file.write_text(json.dumps(gap, indent=2) + "\n")


def read_run(folder: Path) -> dict | None:
    """A finished diagnosis stage: final mIoU, time course, diagnostics, feature gap, wall time."""
    marker = folder / STAGE_FILE
    if not marker.exists():
        return None
    state = json.loads(marker.read_text())
    if not state.get("complete"):
        return None
    course = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/miou" in row:
            course[row["iteration"]] = row["eval/miou"]
    gap_file = folder / "feature_gap.json"
    return {
        "miou": state["outputs"]["miou"],
        "course": course,
        "diagnostics": alignment_course(folder / "metrics.jsonl"),
        "feature_gap": json.loads(gap_file.read_text())["mean"] if gap_file.exists() else None,
        "wall_seconds": state.get("wall_seconds"),
    }


def collect(output: Path, cfg, seed: int, matched_weight: float | None) -> dict:
    cfg, stages, cda, bn_target, pseudo = base_stages(output, cfg, seed)
    seed_dir = output / f"seed{seed}"
    regime_file = seed_dir / "02_pseudo_fada_per_class.json"
    if not regime_file.exists():
        regime_file.write_text(json.dumps(per_class_regime(cfg, pseudo.outputs["store"]), indent=2) + "\n")
    fada_gap_file = seed_dir / "01_cda_fada_feature_gap.json"
    if not fada_gap_file.exists():
        fada_gap_file.write_text(
            json.dumps(feature_gap(cfg, cda.outputs["checkpoint"], pseudo.outputs["store"]), indent=2) + "\n"
        )
    cda_metrics = json.loads((cda.folder / "eval" / "metrics.json").read_text())
    runs = {}
    for variant in [*VARIANTS, MATCHED]:
        for method in METHODS:
            run = read_run(seed_dir / f"03_diag_{slug(variant)}_{method}")
            if run is not None:
                metrics_file = seed_dir / f"03_diag_{slug(variant)}_{method}" / "eval" / "metrics.json"
                run["per_class_iou"] = json.loads(metrics_file.read_text())["per_class_iou"]
                runs.setdefault(variant, {})[method] = run
    return {
        "fada": cda.outputs["miou"],
        "adabn": bn_target.outputs["miou"],
        "fada_per_class_iou": cda_metrics["per_class_iou"],
        "regime": {key: pseudo.outputs[key] for key in ("trusted_fraction", "trusted_precision")},
        "per_class_regime": json.loads(regime_file.read_text()),
        "fada_feature_gap": json.loads(fada_gap_file.read_text())["mean"],
        "runs": runs,
    }


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(results: dict[int, dict]) -> str:
    lines = [f"CPU: {cpu_description()}; fp32. Seeds {sorted(results)}; CDA model: FADA.", ""]
    for seed, res in results.items():
        lines += [
            f"### Seed {seed}: FADA {res['fada']:.2f}, AdaBN {res['adabn']:.2f}, trusted "
            f"{res['regime']['trusted_fraction']:.1%} at {res['regime']['trusted_precision']:.1%} precision",
            "",
            "| variant | CRA | pseudo-label only | entropy min. | mean of the three | CRA − PL-only "
            "| minutes (CRA, PL, EM) |",
            "|---|---|---|---|---|---|---|",
        ]
        for variant, runs in res["runs"].items():
            values = [runs[m]["miou"] if m in runs else None for m in METHODS]
            present = [v for v in values if v is not None]
            lead = values[0] - values[1] if values[0] is not None and values[1] is not None else None
            minutes = ", ".join(fmt(runs[m]["wall_seconds"] / 60, ".1f") if m in runs else "–" for m in METHODS)
            lines.append(
                f"| {variant} | {' | '.join(fmt(v) for v in values)} | "
                f"{fmt(sum(present) / len(present)) if len(present) == 3 else '–'} | {fmt(lead, '+.2f')} "
                f"| {minutes} |"
            )
        lines += ["", "Time course (target-val mIoU every 25 iterations; iteration 0 = FADA):", ""]
        for variant, runs in res["runs"].items():
            for method, run in runs.items():
                points = ", ".join(f"{it}: {miou:.2f}" for it, miou in sorted(run["course"].items()))
                lines.append(f"- {variant}, {method}: 0: {res['fada']:.2f}, {points}")
        lines += ["", "Alignment (mean over the run; ratio = ‖∇ region term‖ / ‖∇ trusted CE‖):", ""]
        lines += [
            "| variant | method | grad ratio first / last | D acc. trusted | D acc. untrusted "
            "| feature gap (FADA → after) |",
            "|---|---|---|---|---|---|",
        ]
        for variant, runs in res["runs"].items():
            for method, run in runs.items():
                ratios, acc_t, acc_u = (
                    [value for _, value in run["diagnostics"].get(key, [])]
                    for key in ("grad_ratio", "disc_acc_trusted", "disc_acc_untrusted")
                )
                lines.append(
                    f"| {variant} | {method} | "
                    f"{f'{ratios[0]:.1e} / {ratios[-1]:.1e}' if ratios else '–'} | "
                    f"{fmt(sum(acc_t) / len(acc_t) if acc_t else None, '.3f')} | "
                    f"{fmt(sum(acc_u) / len(acc_u) if acc_u else None, '.3f')} | "
                    f"{fmt(res['fada_feature_gap'], '.3f')} → {fmt(run['feature_gap'], '.3f')} |"
                )
        lines += [
            "",
            "Per class (FADA's store on target train; IoU change after each method, control recipe):",
            "",
            "| class | pixels % | trusted % | trusted precision % | on a border % | FADA IoU | Δ CRA | Δ PL-only "
            "| Δ EM |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        control = res["runs"].get("control", {})
        for name, stats in res["per_class_regime"].items():
            base = res["fada_per_class_iou"].get(name)
            deltas = [
                fmt(control[m]["per_class_iou"].get(name) - base, "+.1f")
                if m in control and base is not None and control[m]["per_class_iou"].get(name) is not None
                else "–"
                for m in METHODS
            ]
            lines.append(
                f"| {name} | {fmt(stats['pixel_share'] and 100 * stats['pixel_share'], '.1f')} | "
                f"{fmt(stats['trusted_share'] and 100 * stats['trusted_share'], '.1f')} | "
                f"{fmt(stats['trusted_precision'] and 100 * stats['trusted_precision'], '.1f')} | "
                f"{fmt(stats['border_share'] and 100 * stats['border_share'], '.1f')} | {fmt(base, '.1f')} | "
                f"{' | '.join(deltas)} |"
            )
        lines.append("")
    if len(results) > 1:
        lines += ["### Over seeds (mean ± std, paired differences per seed)", ""]
        lines += [
            "| variant | CRA | PL-only | EM | CRA − FADA | CRA − PL-only | CRA − EM |",
            "|---|---|---|---|---|---|---|",
        ]
        variants = [v for v in [*VARIANTS, MATCHED] if all(v in r["runs"] for r in results.values())]
        for variant in variants:
            rows = [r["runs"][variant] for r in results.values()]
            if not all(all(m in row for m in METHODS) for row in rows):
                continue
            cells = [mean_std([row[m]["miou"] for row in rows]) for m in METHODS]
            diffs = [
                mean_std([row["cra"]["miou"] - r["fada"] for row, r in zip(rows, results.values())]),
                mean_std([row["cra"]["miou"] - row["pseudo_label_only"]["miou"] for row in rows]),
                mean_std([row["cra"]["miou"] - row["entropy_min"]["miou"] for row in rows]),
            ]
            lines.append(
                f"| {variant} | "
                + " | ".join(f"{c[0]:.2f} ± {c[1]:.2f}" for c in cells)
                + " | "
                + " | ".join(f"{d[0]:+.2f} ± {d[1]:.2f}" for d in diffs)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_benchmark_arguments(parser)
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), help=f"variants to train (default all: {list(VARIANTS)})"
    )
    parser.add_argument(
        "--matched-weight",
        type=float,
        help="also train CRA and entropy min. with this weight of their region term (the matched-weight variant)",
    )
    parser.add_argument("--report-only", action="store_true", help="train nothing; tabulate the finished stages")
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    cfg, _ = prepared_benchmark(args)
    cfg = dataclasses.replace(cfg, cda_methods=(CDA,))
    variants = list(args.variants) + ([MATCHED] if args.matched_weight is not None else [])
    if not args.report_only:
        for seed in args.seeds:
            run_variants(args.output, cfg, seed, variants, args.matched_weight, args.quick)
    results = {seed: collect(args.output, cfg, seed, args.matched_weight) for seed in args.seeds}
    text = markdown(results)
    (args.output / "cra_diagnosis.md").write_text(text)
    (args.output / "cra_diagnosis.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    counted = sum(len(r["runs"]) for r in results.values())
    print(f"cra_diagnosis: {counted} variant(s) tabulated over seeds {args.seeds}")
    return 0 if counted else 1


if __name__ == "__main__":
    sys.exit(main())
