"""Label-free selection on the embedded benchmark: do the criteria of ``crossregion select`` choose well?

The pool, per training seed: every checkpoint kept by the training stages of the accuracy
benchmark's run in ``OUTPUT/seed<N>`` (bench/accuracy.py: source-only, each CDA method, CRA after
each, the Table-3 baselines after FADA) and by CRA after FADA at λ = 0.005 and 0.02
(bench/cra_ablations.py's stages); the oracle, trained on target labels, is left out. Stages are
cached: on a finished accuracy run only the λ stages that cra_ablations has not trained yet are
trained. How many checkpoints a stage keeps is its preset's ``engine.checkpoint_period`` and
``engine.keep_last`` (two per stage in the demo presets).

Every candidate is scored by every criterion on unlabelled target train (DEV also on the labelled
source images) and evaluated on target val, the truth. For each criterion: Spearman's ρ between
its score (signed so that higher is better) and the true mIoU over the whole pool and, averaged,
within each stage's checkpoints; and the regret (best true mIoU − the true mIoU of the chosen
candidate, averaged over the decisions) of three decisions: the CRA iteration (per seed and CDA
method, among the CRA stage's checkpoints), λ (per seed, among the final CRA-after-FADA models
at the three λ) and the CDA model (per seed, among the final CDA models). Two references: the
default choice (the final checkpoint, λ = 0.01; none for the CDA model) and a random choice
(its expected regret).

    python bench/selection.py --output runs/bench
    python bench/selection.py --output runs/bench_seed7 --benchmark-seed 7 --size 96 192 --seeds 0
    python bench/selection.py --output /tmp/selection --seeds 0 --quick      # smoke, a few minutes

Writes ``OUTPUT/selection.md`` and ``selection.json`` and prints the table; the last line is the
headline (the criterion with the highest pooled ρ).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from common import add_benchmark_arguments, prepared_benchmark, with_seed
from cra_ablations import METHOD, variant_stage

from crossregion.app.pipeline.cache import Stages
from crossregion.app.pipeline.config import PipelineConfig
from crossregion.app.pipeline.run import run_pipeline
from crossregion.app.pipeline.stages import cda_stage, evaluate_checkpoint, training_stage
from crossregion.app.select import ImageSet, rank_checkpoints
from crossregion.engine.checkpoint import periodic_checkpoints
from crossregion.eval.selection import CRITERIA, TrustRule
from crossregion.files import write_text_atomically

# λ -> the cra_ablations variant that trains CRA after FADA with it.
LAMBDA_VARIANTS = {0.005: "λ halved (0.005)", 0.01: "CRA (paper's constants)", 0.02: "λ doubled (0.02)"}
# --quick: every stage keeps a checkpoint at each of its two iterations.
QUICK_CHECKPOINTS = ("engine.checkpoint_period=1", "engine.keep_last=2")
LEFT_OUT_STAGES = ("00_oracle",)


def pool_stages(output: Path, cfg: PipelineConfig, seed: int) -> dict[str, dict]:
    """Stage name -> ``folder`` and its role (``cda``, ``cra`` with the method, ``lambda``) for one seed."""
    seed_cfg = with_seed(cfg, seed)
    results = run_pipeline(seed_cfg, output / f"seed{seed}")
    stages = Stages(output / f"seed{seed}")
    source = training_stage(stages, seed_cfg, "00_source", seed_cfg.source, {}, [])
    cda = {method: cda_stage(stages, seed_cfg, method, source) for method in seed_cfg.cda_methods}
    lambdas = {lam: variant_stage(stages, seed_cfg, cda[METHOD], variant) for lam, variant in LAMBDA_VARIANTS.items()}
    pool = {}
    for name, stage in {**results["stages"], **{r.name: {"folder": str(r.folder)} for r in lambdas.values()}}.items():
        folder = Path(stage["folder"])
        if name in LEFT_OUT_STAGES or not periodic_checkpoints(folder):
            continue
        pool[name] = {"folder": folder, "roles": []}
    for method, record in cda.items():
        pool[record.name]["roles"].append(("cda", method))
    for method in seed_cfg.cda_methods:
        pool[f"03_cra_{method}"]["roles"].append(("cra", method))
    for lam, record in lambdas.items():
        pool[record.name]["roles"].append(("lambda", lam))
    return pool


def candidates_of_seed(output: Path, cfg: PipelineConfig, seed: int, args: argparse.Namespace) -> list[dict]:
    """Every checkpoint of the seed's pool with its stage, roles, true mIoU and criterion scores."""
    pool = pool_stages(output, cfg, seed)
    rows = []
    for name, stage in pool.items():
        checkpoints = periodic_checkpoints(stage["folder"])
        for path in checkpoints:
            rows.append(
                {
                    "seed": seed,
                    "stage": name,
                    "roles": stage["roles"],
                    "final": path == checkpoints[-1],
                    "path": str(path),
                    "miou": _true_miou(cfg, path, output / f"seed{seed}" / "selection" / name / path.stem),
                }
            )
    report = _scores(output / f"seed{seed}" / "selection" / "scores.json", [Path(r["path"]) for r in rows], cfg, args)
    scores = {row["path"]: row["scores"] for row in report["candidates"]}
    for row in rows:
        row["scores"] = scores[row["path"]]
    return rows


def _true_miou(cfg: PipelineConfig, checkpoint: Path, folder: Path) -> float:
    metrics = folder / "metrics.json"
    if not metrics.exists():
        evaluate_checkpoint(cfg, checkpoint, folder)
    return float(json.loads(metrics.read_text())["miou"])


def _scores(path: Path, checkpoints: list[Path], cfg: PipelineConfig, args: argparse.Namespace) -> dict:
    """The ``crossregion select`` report of the checkpoints, reused from ``path`` when it holds the same ones."""
    target = ImageSet(cfg.target.name, cfg.target.root, cfg.target.train_split, cfg.target.input_size, args.images)
    source = ImageSet("gta5", cfg.dataset_roots["gta5"], "train", None, args.source_images)
    settings = {"target": dataclasses.asdict(target), "source": dataclasses.asdict(source), "pixels": args.pixels}
    if path.exists():
        cached = json.loads(path.read_text())
        same_candidates = [c["path"] for c in cached["candidates"]] == list(map(str, checkpoints))
        if cached["settings_key"] == settings and same_candidates:
            return cached
    rule = cfg.pseudo_label
    report = rank_checkpoints(
        checkpoints,
        list(CRITERIA),
        target=target,
        source=source,
        rule=TrustRule(rule.threshold, rule.rare_share, rule.rare_factor),
        pixels_per_image=args.pixels,
        device=cfg.device,
    )
    report["settings_key"] = settings
    write_text_atomically(path, json.dumps(report, indent=2) + "\n")
    return report


# ------------------------------------------------------------------------------------ statistics
def _ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's ρ (Pearson's r of the ranks); None when either side is constant or has < 2 values."""
    if len(a) < 2:
        return None
    ranks_a, ranks_b = _ranks(a), _ranks(b)
    if len(set(ranks_a)) < 2 or len(set(ranks_b)) < 2:
        return None
    return statistics.correlation(ranks_a, ranks_b)


def _signed(row: dict, criterion: str) -> float:
    return row["scores"][criterion] if CRITERIA[criterion].higher_is_better else -row["scores"][criterion]


def _chooser(criterion: str) -> Callable[[list[dict]], dict]:
    """The candidate ``criterion`` ranks first (the first of equals)."""
    return lambda group: max(group, key=lambda row: _signed(row, criterion))


def decisions(rows: list[dict]) -> dict[str, list[list[dict]]]:
    """Decision name -> its groups of candidates (one group per choice to make)."""
    groups: dict[str, dict[tuple, list[dict]]] = {"CRA iteration": {}, "λ": {}, "CDA model": {}}
    for row in rows:
        for role, value in row["roles"]:
            if role == "cra":
                groups["CRA iteration"].setdefault((row["seed"], value), []).append(row)
            elif role == "lambda" and row["final"]:
                groups["λ"].setdefault((row["seed"],), []).append(row)
            elif role == "cda" and row["final"]:
                groups["CDA model"].setdefault((row["seed"],), []).append(row)
    return {name: list(found.values()) for name, found in groups.items()}


def regret(groups: list[list[dict]], choose: Callable[[list[dict]], dict]) -> float | None:
    """Mean over groups of the best true mIoU minus the chosen candidate's."""
    if not groups:
        return None
    return statistics.fmean(max(row["miou"] for row in group) - choose(group)["miou"] for group in groups)


def _random_regret(groups: list[list[dict]]) -> float | None:
    if not groups:
        return None
    return statistics.fmean(
        max(row["miou"] for row in group) - statistics.fmean(row["miou"] for row in group) for group in groups
    )


def _default_choice(decision: str) -> Callable[[list[dict]], dict] | None:
    if decision == "CRA iteration":
        return lambda group: next(row for row in group if row["final"])
    if decision == "λ":
        return lambda group: next(row for row in group if ("lambda", 0.01) in row["roles"])
    return None


def summarize(rows: list[dict]) -> dict:
    by_decision = decisions(rows)
    stages = {}
    for row in rows:
        stages.setdefault((row["seed"], row["stage"]), []).append(row)
    summary: dict = {"candidates": len(rows), "stages": len(stages), "criteria": {}, "references": {}}
    truth = [row["miou"] for row in rows]
    for criterion in CRITERIA:
        within = [
            rho
            for group in stages.values()
            if (rho := spearman([_signed(r, criterion) for r in group], [r["miou"] for r in group])) is not None
        ]
        summary["criteria"][criterion] = {
            "rho_pool": spearman([_signed(r, criterion) for r in rows], truth),
            "rho_within_stage": statistics.fmean(within) if within else None,
            "stages_with_rho": len(within),
            "regret": {name: regret(groups, _chooser(criterion)) for name, groups in by_decision.items()},
        }
    summary["references"]["default choice"] = {
        name: regret(groups, choice) if (choice := _default_choice(name)) else None
        for name, groups in by_decision.items()
    }
    summary["references"]["random choice (expected)"] = {
        name: _random_regret(groups) for name, groups in by_decision.items()
    }
    summary["decisions"] = {name: len(groups) for name, groups in by_decision.items()}
    return summary


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(summary: dict, seeds: list[int]) -> str:
    names = list(summary["decisions"])
    lines = [
        f"{summary['candidates']} candidates in {summary['stages']} stages over seeds {seeds}; regret in mIoU points "
        f"over {', '.join(f'{n} {name}' for name, n in summary['decisions'].items())} decisions.",
        "",
        "| criterion | ρ over the pool | ρ within a stage (mean, stages) | "
        + " | ".join(f"regret: {name}" for name in names)
        + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for criterion, stats in summary["criteria"].items():
        regrets = " | ".join(_number(stats["regret"][name]) for name in names)
        lines.append(
            f"| {criterion} | {_number(stats['rho_pool'], 3)} | {_number(stats['rho_within_stage'], 3)} "
            f"({stats['stages_with_rho']}) | {regrets} |"
        )
    for reference, regrets in summary["references"].items():
        lines.append(f"| {reference} | – | – | " + " | ".join(_number(regrets[name]) for name in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_benchmark_arguments(parser)
    parser.add_argument("--images", type=int, default=100, help="target-train images scored per candidate")
    parser.add_argument("--source-images", type=int, default=100, help="source images for DEV")
    parser.add_argument("--pixels", type=int, default=512, help="pixels drawn per target image")
    args = parser.parse_args()
    cfg, _ = prepared_benchmark(args)
    if args.quick:
        cfg = dataclasses.replace(cfg, common_overrides=(*cfg.common_overrides, *QUICK_CHECKPOINTS))
    rows = [row for seed in args.seeds for row in candidates_of_seed(args.output, cfg, seed, args)]
    summary = summarize(rows)
    text = markdown(summary, args.seeds)
    write_text_atomically(args.output / "selection.md", text)
    write_text_atomically(
        args.output / "selection.json", json.dumps({"summary": summary, "candidates": rows}, indent=2) + "\n"
    )
    print(text)
    rated = {name: stats["rho_pool"] for name, stats in summary["criteria"].items() if stats["rho_pool"] is not None}
    if not rated:
        print("selection could not compute ρ for any criterion", file=sys.stderr)
        return 1
    best = max(rated, key=rated.get)
    print(f"selection best pooled ρ: {best} {rated[best]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
