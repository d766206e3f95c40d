"""Reading run folders for the report: a pipeline folder or a single training run, as plain data.

A pipeline folder (``crossregion pipeline`` / ``crossregion demo``) holds ``results.json`` and one
folder per stage; a training run (``crossregion train``) holds ``config.yaml`` and
``metrics.jsonl``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossregion.app.pipeline.cache import STAGE_FILE
from crossregion.app.pipeline.config import BASELINE_TITLES
from crossregion.engine.logging import read_metrics
from crossregion.files import read_json

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVAL_METRICS_FILE = Path("eval") / "metrics.json"
STORE_STATS_FILE = Path("store") / "stats.json"


@dataclass
class Stage:
    """One stage folder of a pipeline, or a whole training run: what it recorded, where present."""

    name: str
    config: dict[str, Any] | None  # config.yaml (training stages only)
    metric_rows: list[dict[str, Any]]  # metrics.jsonl, one dict per logged line
    per_class_iou: dict[str, float | None] | None  # eval/metrics.json on target val
    record: dict[str, Any] | None  # stage.json (pipeline stages only)


@dataclass
class MethodSeries:
    """The stages of one CDA method of a pipeline, in the order the per-class IoU chart shows them."""

    method: str
    iou_series: dict[str, Stage]  # series label -> stage with per-class IoU
    panel: Path | None  # the Fig.-3 panel PNG
    store_stats: dict[str, Any] | None  # the pseudo-label store's stats.json
    results_row: dict[str, Any]  # results.json["methods"][method]


@dataclass
class Run:
    """A run folder given to ``crossregion report``."""

    label: str
    path: Path
    kind: str  # "pipeline" or "training run"
    stages: list[Stage]
    results: dict[str, Any] | None = None  # results.json of a pipeline
    pipeline_config: dict[str, Any] | None = None  # pipeline.yaml of a pipeline
    methods: list[MethodSeries] = field(default_factory=list)


def load_run(path: Path, label: str) -> Run:
    """The pipeline or training run in ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is neither a pipeline folder nor a training run.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    if (path / RESULTS_FILE).is_file():
        return _load_pipeline(path, label)
    if (path / CONFIG_FILE).is_file() and (path / METRICS_FILE).is_file():
        return Run(label, path, "training run", [_load_stage(path, path.name)])
    raise ValueError(
        f"{path} is neither a pipeline folder (no {RESULTS_FILE}) nor a training run "
        f"(no {CONFIG_FILE} with {METRICS_FILE})"
    )


def _load_pipeline(path: Path, label: str) -> Run:
    results = read_json(path / RESULTS_FILE)
    # Stage folders are looked up under ``path`` by name: results.json records absolute paths,
    # which break when a run folder is moved or copied.
    stages = {name: _load_stage(path / name, name) for name in results["stages"] if (path / name).is_dir()}
    pipeline_yaml = path / "pipeline.yaml"
    run = Run(
        label,
        path,
        "pipeline",
        list(stages.values()),
        results=results,
        pipeline_config=yaml.safe_load(pipeline_yaml.read_text()) if pipeline_yaml.is_file() else None,
    )
    for method, row in results["methods"].items():
        candidates = {
            "source-only": "00_source",
            "CDA": f"01_cda_{method}",
            **{title: f"03_{baseline}_{method}" for baseline, title in BASELINE_TITLES.items()},
            "+CRA": f"03_cra_{method}",
            "+CRA +SD": f"05_self_distill_{method}",
        }
        series = {
            label: stages[name]
            for label, name in candidates.items()
            if name in stages and stages[name].per_class_iou is not None
        }
        stats_path = path / f"02_pseudo_{method}" / STORE_STATS_FILE
        panel = path / f"panel_{method}.png"
        run.methods.append(
            MethodSeries(
                method,
                series,
                panel if panel.is_file() else None,
                read_json(stats_path) if stats_path.is_file() else None,
                row,
            )
        )
    return run


def _load_stage(folder: Path, name: str) -> Stage:
    config_path = folder / CONFIG_FILE
    metrics_path = folder / METRICS_FILE
    eval_path = folder / EVAL_METRICS_FILE
    record_path = folder / STAGE_FILE
    rows = []
    if metrics_path.is_file():
        rows = read_metrics(metrics_path)
    return Stage(
        name=name,
        config=yaml.safe_load(config_path.read_text()) if config_path.is_file() else None,
        metric_rows=rows,
        per_class_iou=read_json(eval_path)["per_class_iou"] if eval_path.is_file() else None,
        record=read_json(record_path) if record_path.is_file() else None,
    )


def flat_config(run: Run) -> dict[str, str]:
    """Every config value of ``run`` under a dotted key (``<stage>.optim.lr``, ``pipeline.device``)."""
    flat: dict[str, str] = {}
    if run.pipeline_config is not None:
        _flatten(run.pipeline_config, "pipeline", flat)
    for stage in run.stages:
        if stage.config is not None:
            _flatten(stage.config, stage.name if run.kind == "pipeline" else "", flat)
    return flat


def _flatten(value: Any, prefix: str, into: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), into)
    else:
        into[prefix] = json.dumps(value)


def differing_keys(runs: list[Run]) -> list[tuple[str, list[str | None]]]:
    """The config keys whose value is not the same in every run, with each run's value (None: absent)."""
    flats = [flat_config(run) for run in runs]
    keys = sorted(set().union(*flats))
    rows = [(key, [flat.get(key) for flat in flats]) for key in keys]
    return [(key, values) for key, values in rows if len(set(values)) > 1]
