"""The order of the pipeline's stages, its results files, and the ``crossregion pipeline`` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import yaml

from crossregion.app.pipeline.analysis import cra_mechanism, write_fig3_panel
from crossregion.app.pipeline.cache import StageRecord, Stages, write_json
from crossregion.app.pipeline.config import PipelineConfig, adapted, load_pipeline_config
from crossregion.app.pipeline.selection import select_checkpoint
from crossregion.app.pipeline.stages import (
    bn_target_stage,
    cda_stage,
    pseudo_label_stage,
    training_stage,
    with_overrides,
)
from crossregion.app.pipeline.tables import results_markdown
from crossregion.files import check_output_folder, exclusive_writer, write_text_atomically

logger = logging.getLogger(__name__)


def run_pipeline(cfg: PipelineConfig, output: str | Path) -> dict[str, Any]:
    """Run every stage ``cfg`` asks for (skipping up-to-date ones); write and return the results."""
    output = Path(output)
    with exclusive_writer(output):  # one pipeline per run folder
        return _run_stages(cfg, output)


def _run_stages(cfg: PipelineConfig, output: Path) -> dict[str, Any]:
    write_text_atomically(output / "pipeline.yaml", yaml.safe_dump(_plain(dataclasses.asdict(cfg)), sort_keys=False))
    stages = Stages(output)
    source = training_stage(stages, cfg, "00_source", cfg.source, {}, [])
    results: dict[str, Any] = {"source_only": source.outputs["miou"], "oracle": None, "methods": {}}
    if cfg.oracle is not None:
        results["oracle"] = training_stage(stages, cfg, "00_oracle", cfg.oracle, {}, []).outputs["miou"]
    for method in cfg.cda_methods:
        results["methods"][method] = _run_method(stages, cfg, method, source, output)
    results["stages"] = {
        name: {"folder": str(r.folder), "hash": r.hash, "skipped": r.skipped} for name, r in stages.records.items()
    }
    write_json(output / "results.json", results)
    write_text_atomically(output / "results.md", results_markdown(results))
    return results


def _run_method(stages: Stages, cfg: PipelineConfig, method: str, source: StageRecord, output: Path) -> dict[str, Any]:
    cda = cda_stage(stages, cfg, method, source)
    bn_target = bn_target_stage(stages, cfg, f"01_bn_target_{method}", cda)
    pseudo = pseudo_label_stage(stages, cfg, f"02_pseudo_{method}", cda)
    wiring = {"cda_checkpoint": cda.outputs["checkpoint"], "pseudo_labels": pseudo.outputs["store"]}
    cra = training_stage(
        stages,
        adapted(cfg),
        f"03_cra_{method}",
        with_overrides(cfg.cra, cfg.cra_overrides.get(method)),
        wiring,
        [cda, pseudo],
    )
    cra = select_checkpoint(stages, adapted(cfg), cra, pseudo)
    row: dict[str, Any] = {
        "cda": cda.outputs["miou"],
        "bn_target": bn_target.outputs["miou"],
        "cra": cra.outputs["miou"],
        **{
            key: pseudo.outputs[key]
            for key in ("trusted_fraction", "trusted_precision", "untrusted_share", "pseudo_label_accuracy")
        },
        "error_share_untrusted_cda": pseudo.outputs["error_share_untrusted"],
    }
    trained = {"cra": (cra.outputs["checkpoint"], cra.folder)}
    trained_hashes = [cra.hash]
    with_baselines = cfg.baseline_methods is None or method in cfg.baseline_methods
    for baseline, spec in (cfg.baselines if with_baselines else {}).items():
        record = training_stage(
            stages,
            adapted(cfg),
            f"03_{baseline}_{method}",
            with_overrides(spec, cfg.cra_overrides.get(method)),
            wiring,
            [cda, pseudo],
        )
        record = select_checkpoint(stages, adapted(cfg), record, pseudo)
        row[baseline] = record.outputs["miou"]
        trained[baseline] = (record.outputs["checkpoint"], record.folder)
        trained_hashes.append(record.hash)
    # After every model of the method is trained: their feature gaps side by side.
    analysis = stages.run(
        f"03_cra_{method}_analysis",
        {"kind": "analysis", "version": 2, "upstream": [pseudo.hash, *trained_hashes]},
        lambda folder: cra_mechanism(cfg, cda.outputs["checkpoint"], pseudo.outputs["store"], trained),
    )
    row["error_share_untrusted_cra"] = analysis.outputs["error_share_untrusted"]
    row["mechanism"] = {key: analysis.outputs[key] for key in ("per_class_regime", "feature_gap", "alignment")}
    if cfg.self_distill is not None:
        cra_pseudo = pseudo_label_stage(stages, adapted(cfg), f"04_pseudo_cra_{method}", cra)
        distilled = training_stage(
            stages,
            adapted(cfg),
            f"05_self_distill_{method}",
            cfg.self_distill,
            {"cra_checkpoint": cra.outputs["checkpoint"], "pseudo_labels": cra_pseudo.outputs["store"]},
            [cra, cra_pseudo],
        )
        row["self_distill"] = distilled.outputs["miou"]
    if cfg.panel_images:
        panel = output / f"panel_{method}.png"
        write_fig3_panel(cfg, panel, cda.outputs["checkpoint"], cra.outputs["checkpoint"], pseudo.outputs["store"])
        row["panel"] = str(panel)
    return row


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="pipeline preset (e.g. demo, gta5_fada_r101) or YAML path")
    parser.add_argument("--output", required=True, type=Path, help="run folder: one sub-folder per stage, results.*")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of the pipeline config, e.g. cda_methods=[fada] oracle=null",
    )


def main(args: argparse.Namespace) -> int:
    check_output_folder(args.output)
    cfg = load_pipeline_config(args.config, args.overrides)
    run_pipeline(cfg, args.output)
    show_results(args.output, f"wrote {args.output / 'results.json'} and {args.output / 'results.md'}")
    return 0


def show_results(output: Path, finished: str) -> None:
    """The end of ``pipeline`` and ``demo``: print results.md and ``finished``, then write the HTML report."""
    from crossregion.app.report import write_run_report

    print((output / "results.md").read_text())
    print(finished)
    report = write_run_report(output)
    if report is not None:
        print(f"report: {report} (open it in any browser)")
