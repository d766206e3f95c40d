"""``crossregion report RUN_DIR [RUN_DIR ...] --output report.html``: one self-contained HTML page.

For a pipeline folder, a training run or several side by side: the pipeline's tables, per-class
IoU bars with the change CRA makes, training curves on a shared iteration axis, the Fig.-3 panels,
the pseudo-label store's entropy histogram and trusted fractions, each run's config (and the keys
in which runs differ), and where, on what and how long each stage ran. Images are embedded as
data URIs, so the file opens from disk in any browser, offline. Needs the ``report`` extra
(matplotlib, jinja2); ``runs.py`` reads the folders, ``charts.py`` draws, ``templates/report.html``
lays out.
"""

from __future__ import annotations

import argparse
import datetime
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from crossregion.app.report.runs import Run, differing_keys, load_run
from crossregion.errors import CrossregionError

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
INSTALL_HINT = "pip install 'crossregion[report]'"
# Width (px) a small Fig.-3 panel is shown at, scaled by a whole factor so label pixels stay crisp.
PANEL_WIDTH = 1000
# Section ids of the page, in order, with their titles (the navigation and the tests use them).
SECTIONS = {
    "results": "Results",
    "per-class-iou": "Per-class IoU",
    "curves": "Training curves",
    "pseudo-labels": "Pseudo labels and Fig. 3",
    "configs": "Configs",
    "stages": "Stages: machine, versions, wall time",
}


class MissingReportDependency(CrossregionError):
    """matplotlib or jinja2, which only the report needs, is not installed."""


def write_report(run_dirs: Sequence[Path], output: Path) -> Path:
    """Write the report of ``run_dirs`` to ``output`` and return its path.

    Raises:
        MissingReportDependency: the ``report`` extra is not installed.
        FileNotFoundError, ValueError: a run folder is missing or not a run.
    """
    try:
        import jinja2

        from crossregion.app.report import charts
    except ImportError as error:
        raise MissingReportDependency(f"the report needs {error.name.split('.')[0]}: {INSTALL_HINT}") from error
    runs = [load_run(Path(path), label) for path, label in zip(run_dirs, _labels(run_dirs))]
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("crossregion.app.report"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    page = environment.get_template("report.html").render(**_context(runs, charts))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    return output


def write_run_report(run_dir: Path) -> Path | None:
    """``run_dir/report.html`` at the end of a pipeline; without the extra, one log line and None."""
    try:
        return write_report([run_dir], run_dir / REPORT_FILE)
    except MissingReportDependency as error:
        logger.warning("no %s: %s", REPORT_FILE, error)
        return None


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Folder names, or the paths as given when two folders share a name."""
    names = [Path(path).resolve().name for path in run_dirs]
    return names if len(set(names)) == len(names) else [str(path) for path in run_dirs]


# ------------------------------------------------------------------------------------ context
def _context(runs: list[Run], charts) -> dict[str, Any]:
    from crossregion import __version__
    from crossregion.app.pipeline.tables import results_tables

    several = len(runs) > 1
    curve_lines = [
        (f"{run.label} · {stage.name}" if several else stage.name, stage.metric_rows)
        for run in runs
        for stage in run.stages
        if stage.metric_rows
    ]
    return {
        "sections": SECTIONS,
        "runs": runs,
        "generated": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "version": __version__,
        "results": [(run, results_tables(run.results)) for run in runs if run.results is not None],
        "iou_charts": _iou_charts(runs, charts),
        "curves_chart": charts.training_curves_chart(curve_lines) if curve_lines else None,
        "curve_keys": charts.curve_keys(curve_lines),
        "pseudo_labels": _pseudo_labels(runs, charts),
        "configs": _configs(runs),
        "differences": differing_keys(runs) if several else None,
        "stages": _stage_rows(runs),
    }


def _iou_charts(runs: list[Run], charts) -> list[dict[str, Any]]:
    found = []
    for run in runs:
        for method in run.methods:
            if method.iou_series:
                series = {label: stage.per_class_iou for label, stage in method.iou_series.items()}
                delta = ("CDA", "+CRA") if {"CDA", "+CRA"} <= set(series) else None
                found.append(
                    {"title": f"{run.label} · {method.method}", "uri": charts.per_class_iou_chart(series, delta)}
                )
        if run.kind == "training run" and run.stages[0].per_class_iou is not None:
            found.append(
                {"title": run.label, "uri": charts.per_class_iou_chart({run.label: run.stages[0].per_class_iou}, None)}
            )
    return found


def _pseudo_labels(runs: list[Run], charts) -> list[dict[str, Any]]:
    from PIL import Image

    found = []
    for run in runs:
        for method in run.methods:
            stats = method.store_stats
            panel_width = None
            if method.panel:
                with Image.open(method.panel) as panel:
                    panel_width = panel.width * max(1, PANEL_WIDTH // panel.width)
            found.append(
                {
                    "title": f"{run.label} · {method.method}",
                    "panel": charts.png_data_uri(method.panel.read_bytes()) if method.panel else None,
                    "panel_width": panel_width,
                    "histogram": charts.entropy_histogram_chart(stats) if stats else None,
                    "trusted": charts.trusted_fraction_chart(stats, method.results_row.get("trusted_precision"))
                    if stats
                    else None,
                }
            )
    return found


def _configs(runs: list[Run]) -> list[dict[str, Any]]:
    documents = []
    for run in runs:
        files = []
        if run.pipeline_config is not None:
            files.append(("pipeline.yaml", run.pipeline_config))
        files += [
            (f"{stage.name}/config.yaml" if run.kind == "pipeline" else "config.yaml", stage.config)
            for stage in run.stages
            if stage.config is not None
        ]
        documents.append({"run": run, "files": [(name, yaml.safe_dump(data, sort_keys=False)) for name, data in files]})
    return documents


def _stage_rows(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        last_invocation = (run.results or {}).get("stages", {})
        for stage in run.stages:
            record = stage.record or {}
            environment = record.get("environment")
            skipped = last_invocation.get(stage.name, {}).get("skipped")
            rows.append(
                {
                    "run": run.label,
                    "stage": stage.name,
                    "kind": record.get("payload", {}).get("kind", "train" if run.kind == "training run" else "–"),
                    "last_run": {True: "up to date, skipped", False: "ran"}.get(skipped, "–"),
                    "wall_time": _duration(record.get("wall_seconds")),
                    "machine": f"{environment['host']} · {environment['device']} · {environment['platform']}"
                    if environment
                    else "not recorded",
                    "versions": f"crossregion {environment['crossregion']} · torch {environment['torch']} · "
                    f"python {environment['python']}"
                    if environment
                    else "not recorded",
                }
            )
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


# ------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="pipeline folder (results.json) or training run (config.yaml, metrics.jsonl)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(REPORT_FILE),
        help=f"HTML file to write (default {REPORT_FILE}); open it in any browser",
    )


def main(args: argparse.Namespace) -> int:
    output = write_report(args.run_dirs, args.output)
    print(f"wrote {output}; open it in any browser (it needs no server or network)")
    return 0
